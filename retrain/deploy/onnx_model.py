"""The classifier as an ONNX model, for ONNX Runtime (--onnx_output).

Input `image`: float32 [batch, H, W, 3], RGB pixel values in [0, 255]
resized to the model's input size (the SavedModel's `serving_images`
contract; the model's scaling happens inside). Output `probabilities`:
float32 [batch, classes], softmax in the order of the labels. The model's
metadata_props carry what a client needs besides: `labels` (one per
line), `input_size` ("H,W"), `input_scaling`, `resize` and `model` (JSON),
and `retrain` (the export's JSON description), so the .onnx file is
enough on its own. Converted by tf2onnx from the same float graph the
TFLite and TensorFlow.js exports start from (never through TFLite, whose
ONNX conversion drops the final layer's bias). Needs the `.[onnx]` extra
(tf2onnx, onnx, onnxruntime), imported only here.
"""

import json
from typing import Dict, Sequence

import numpy as np

from cache import fs
from retrain.deploy import export
from retrain.errors import UserError
from retrain.features.model import FeatureExtractor

# The ONNX operator set the exports use (ONNX Runtime 1.14 and newer run
# it; the README states it).
OPSET = 17
INPUT = "image"
OUTPUT = "probabilities"
BATCH = "batch"


def require() -> None:
  """A one-line error naming the extra when the converter is missing."""
  missing = []
  for module in ("tf2onnx", "onnx"):
    try:
      __import__(module)
    except ImportError:
      missing.append(module)
  if missing:
    raise UserError(f"--onnx_output needs {' and '.join(missing)}: pip "
                    "install 'retrain[onnx]' (or, in a checkout, pip "
                    "install '.[onnx]')")


def onnx_model(fx: FeatureExtractor, weights: np.ndarray, biases: np.ndarray,
               labels: Sequence[str], description: Dict[str, object],
               final_tensor_name: str = "final_result",
               unknown=None) -> bytes:
  """The serialized ONNX model of the classifier (see module docstring);
  description: the export's JSON description (written into its
  metadata)."""
  require()
  import tf2onnx  # pylint: disable=g-import-not-at-top
  from retrain import tfimport  # pylint: disable=g-import-not-at-top
  graph = export.build_float_graph(fx, weights, biases, final_tensor_name,
                                   "image", batch=None, unknown=unknown)
  with tfimport.quiet_stderr():
    proto, _ = tf2onnx.convert.from_graph_def(
        graph.as_graph_def(), input_names=[export.IMAGE_INPUT + ":0"],
        output_names=[final_tensor_name + ":0"], opset=OPSET)
  _rename(proto, {export.IMAGE_INPUT + ":0": INPUT,
                  final_tensor_name + ":0": OUTPUT})
  for value in list(proto.graph.input) + list(proto.graph.output):
    value.type.tensor_type.shape.dim[0].dim_param = BATCH
  proto.producer_name = "retrain"
  proto.doc_string = (f"Image classifier of {len(labels)} classes trained "
                      "by retrain; input image: float32 [batch, H, W, 3] "
                      "RGB 0..255 at input_size; output probabilities in "
                      "the order of the labels property.")
  props = {
      "labels": "\n".join(labels),
      "input_size": ",".join(str(v) for v in fx.input_size),
      "input_scaling": json.dumps({"mean": fx.input_mean,
                                   "std": fx.input_std}),
      "resize": json.dumps(fx.preprocessing.describe(), sort_keys=True),
      "model": json.dumps(fx.describe(), sort_keys=True),
      "retrain": json.dumps(description, sort_keys=True),
  }
  del proto.metadata_props[:]
  for key, value in props.items():
    entry = proto.metadata_props.add()
    entry.key, entry.value = key, value
  return proto.SerializeToString()


def _rename(proto, names: Dict[str, str]) -> None:
  """Renames graph values (inputs, outputs, every node's uses)."""
  graph = proto.graph
  for value in list(graph.input) + list(graph.output):
    value.name = names.get(value.name, value.name)
  for node in graph.node:
    node.input[:] = [names.get(n, n) for n in node.input]
    node.output[:] = [names.get(n, n) for n in node.output]


def write_onnx(path: str, model: bytes) -> None:
  """The .onnx file, written atomically (complete or absent)."""
  fs.write_atomic(path, model, fsync=True)


def description(fx: FeatureExtractor, common: Dict[str, object]
                ) -> Dict[str, object]:
  """The export's JSON description: `common` (classes, model, results)
  with this format's input and output."""
  h, w = fx.input_size
  return dict(common, format=export.METADATA_FORMAT, export="onnx",
              opset=OPSET, inputs={INPUT: {
                  "name": INPUT, "dtype": "float32",
                  "shape": [BATCH, h, w, 3],
                  "description": (f"RGB pixel values in [0, 255], resized "
                                  f"to {h}x{w}; the model's scaling happens "
                                  "inside")}},
              output={"name": OUTPUT, "dtype": "float32",
                      "shape": [BATCH, "classes"],
                      "description": "softmax probabilities in the order "
                                     "of the labels property"})
