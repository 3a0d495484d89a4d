"""Exports for deployment: frozen graph + JSON metadata, labels, SavedModel.

Every exported graph takes either

  image:0        float32 [batch, H, W, 3], RGB pixels in [0, 255], already
                 resized to H x W (the model's scaling is inside the graph), or
  image_bytes:0  string [batch], encoded JPEG/PNG/GIF/BMP/WebP files,
                 decoded and resized inside the graph exactly as during
                 training,

and returns final_result:0, float32 [batch, classes], softmax probabilities
in the order of the labels file. The frozen graph also keeps the pretrained
model's own input for clients written for the classic tool (see
classic_inputs): slim MobileNets' input:0, Inception-v3's Mul:0 and
DecodeJpeg/contents:0. Every file is written atomically; paths inside the
JSON files are relative to the JSON file, so an export folder can be moved.
"""

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import tempfile
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf

from google.protobuf import message as pb_message

from cache import fs
from retrain import __version__
from retrain.data import preprocess
from retrain.deploy import tflite_metadata
from retrain.deploy.metadata import (SAVED_MODEL_METADATA, metadata_path,
                                     relative_to)
from retrain.features import model as model_module
from retrain.features import safety
from retrain.features.model import (MODULE_CACHE, FeatureExtractor,
                                    build_bottleneck, import_cnn,
                                    scale_images)

tf1 = tf.compat.v1

IMAGE_INPUT = "image"
BYTES_INPUT = "image_bytes"
METADATA_FORMAT = "retrain-export/1"
SAVED_MODEL_LABELS = "labels.txt"


# Names of the retrained layer's constants in every exported graph.
WEIGHTS_NODE = "final_weights"
BIASES_NODE = "final_biases"
# With an unknown class (--unknown_label): the known classes' softmax, the
# kept training photos' unit bottlenecks [m, D], the neighbour k, the
# distance threshold and the sigmoid's scale; the ops under UNKNOWN_SCOPE.
KNOWN_PROBABILITIES = "known_probabilities"
PROTOTYPES_NODE = "unknown_prototypes"
K_NODE = "unknown_k"
THRESHOLD_NODE = "unknown_threshold"
SCALE_NODE = "unknown_scale"
UNKNOWN_SCOPE = "unknown"
# `unknown` of a template: placeholders for the unknown class's constants.
PLACEHOLDERS = "placeholders"


# Inception-v3's JPEG input, kept in exports of graphs that have it.
JPEG_INPUT = "DecodeJpeg/contents"

# The logits, under the classic tool's name (the codelab's evaluate.py reads
# final_training_ops/Wx_plus_b/add:0).
LOGITS_SCOPE = ("final_training_ops", "Wx_plus_b")
LOGITS = "/".join(LOGITS_SCOPE) + "/add"

# Name scopes of the export graph's own ops; classic input names must not
# fall inside them.
_SCOPES = ("decode", "scale", "module", LOGITS_SCOPE[0], UNKNOWN_SCOPE)


def _add_layer(bottleneck: tf.Tensor, bottleneck_size: int, weights, biases,
               final_tensor_name: str, unknown=None) -> tf.Tensor:
  """bottleneck [batch, D] -> softmax [batch, classes] of the new layer
  (classes + 1 with an unknown class).

  weights [D, classes] and biases [classes]: arrays (made constants), or
  None for placeholders that fill_final_layer turns into constants.
  unknown: None (no unknown class), a training.unknown.UnknownClass (made
  constants) or PLACEHOLDERS (filled by fill_final_layer).
  """
  def layer(value, shape, name, dtype=tf.float32):
    if value is None:
      return tf1.placeholder(dtype, shape, name=name)
    return tf.constant(value, dtype, name=name)
  w = layer(weights, [bottleneck_size, None], WEIGHTS_NODE)
  b = layer(biases, [None], BIASES_NODE)
  with tf.name_scope(LOGITS_SCOPE[0]), tf.name_scope(LOGITS_SCOPE[1]):
    logits = _named(tf.add(tf.matmul(bottleneck, w), b, name="add"), LOGITS)
  if unknown is None:
    return tf.nn.softmax(logits, name=final_tensor_name)
  known = tf.nn.softmax(logits, name=KNOWN_PROBABILITIES)
  given = unknown is not PLACEHOLDERS
  prototypes = layer(unknown.prototypes if given else None,
                     [None, bottleneck_size], PROTOTYPES_NODE)
  k = layer(unknown.k if given else None, [], K_NODE, tf.int32)
  threshold = layer(unknown.threshold if given else None, [], THRESHOLD_NODE)
  scale = layer(unknown.scale if given else None, [], SCALE_NODE)
  with tf.name_scope(UNKNOWN_SCOPE):
    # Cosines to the kept training photos; the k-th largest is the
    # smallest of the top k.
    unit = bottleneck * tf.math.rsqrt(tf.maximum(
        tf.reduce_sum(tf.square(bottleneck), 1, keepdims=True), 1e-12))
    cosines = tf.matmul(unit, prototypes, transpose_b=True)
    kth = tf.reduce_min(tf.math.top_k(cosines, k).values, 1, keepdims=True)
    p = tf.sigmoid((1.0 - kth - threshold) * scale, name="probability")
  return tf.concat([known * (1.0 - p), p], 1, name=final_tensor_name)


def _add_classifier(fx: FeatureExtractor, image: tf.Tensor,
                    weights, biases, final_tensor_name: str,
                    unknown=None) -> tf.Tensor:
  """image [batch, H, W, 3] in [0, 255] -> softmax [batch, classes]."""
  return _add_layer(build_bottleneck(fx, image), fx.bottleneck_size, weights,
                    biases, final_tensor_name, unknown)


def classic_inputs(fx: FeatureExtractor,
                   final_tensor_name: str = "final_result"
                   ) -> Dict[str, str]:
  """The pretrained model's own input names the frozen export keeps.

  "model_input": the tensor the model was loaded with (slim MobileNets'
  input:0, Inception-v3's Mul:0, a --graph's --input_tensor), taking the
  model's own scaling; "jpeg": Inception-v3's DecodeJpeg/contents:0 (one
  encoded image, a scalar string), when the model's graph has it. A name
  that would clash with the export's own names is left out.
  """
  ours = {IMAGE_INPUT, BYTES_INPUT, final_tensor_name, WEIGHTS_NODE,
          BIASES_NODE, "bottleneck", KNOWN_PROBABILITIES, PROTOTYPES_NODE,
          K_NODE, THRESHOLD_NODE, SCALE_NODE}

  def usable(tensor: str) -> bool:
    node = tensor[:-2]
    return (tensor.endswith(":0") and node not in ours and
            not any(node == s or node.startswith(s + "/") for s in _SCOPES))
  found = {}
  if usable(fx.input_tensor):
    found["model_input"] = fx.input_tensor
  has_jpeg = any(n.name == JPEG_INPUT and n.op == "Placeholder"
                 for n in fx.graph_def.node)
  if has_jpeg and usable(JPEG_INPUT + ":0") and (
      found.get("model_input") != JPEG_INPUT + ":0"):
    found["jpeg"] = JPEG_INPUT + ":0"
  return found


def _named(tensor: tf.Tensor, name: str) -> tf.Tensor:
  if tensor.op.name != name:  # TensorFlow made the name unique: a clash.
    raise ValueError(f"export graph: {name} is taken ({tensor.op.name})")
  return tensor


def build_inference_graph_def(fx: FeatureExtractor, weights: np.ndarray,
                              biases: np.ndarray,
                              final_tensor_name: str = "final_result",
                              unknown=None) -> tf1.GraphDef:
  """The pretrained CNN and the retrained layer as one frozen GraphDef.

  Optimized for inference: nodes the output does not need are stripped and
  constant subgraphs folded.

  Args:
    fx: the pretrained model.
    weights: float32 [D, classes]; biases: float32 [classes].
    final_tensor_name: name of the softmax output.
    unknown: an UnknownClass (training/unknown.py): one more class, last.
  """
  return fill_final_layer(
      inference_graph_template(fx, final_tensor_name, unknown is not None),
      weights, biases, unknown)


def inference_graph_template(fx: FeatureExtractor,
                             final_tensor_name: str = "final_result",
                             unknown: bool = False) -> tf1.GraphDef:
  """build_inference_graph_def with placeholders for the retrained layer.

  The slow part of an export (graph building and optimization, about half a
  second) does not depend on the weights, so it can run while training does;
  fill_final_layer then makes a graph for any weights in milliseconds.
  """
  h, w = fx.input_size
  classic = classic_inputs(fx, final_tensor_name)
  graph = tf.Graph()
  with graph.as_default():
    if "jpeg" in classic:  # One JPEG, as the classic Inception graph took.
      # No static shape: a [1] default would let Grappler fold the batch
      # size of image_bytes to 1. A scalar (or a vector) may be fed.
      contents = _named(tf1.placeholder(tf.string, None, name=JPEG_INPUT),
                        JPEG_INPUT)
      image_bytes = tf1.placeholder_with_default(
          tf.reshape(contents, [-1]), [None], name=BYTES_INPUT)
    else:
      image_bytes = tf1.placeholder(tf.string, [None], name=BYTES_INPUT)
    with tf.name_scope("decode"):
      decoded = preprocess.decode_batch(image_bytes, fx.input_size,
                                        fx.preprocessing)
    image = tf1.placeholder_with_default(decoded, [None, h, w, 3],
                                         name=IMAGE_INPUT)
    with tf.name_scope("scale"):
      scaled = scale_images(fx, image)
    if "model_input" in classic:
      name = classic["model_input"][:-2]
      scaled = _named(tf1.placeholder_with_default(scaled, [None, h, w, 3],
                                                   name=name), name)
    _add_layer(import_cnn(fx, scaled), fx.bottleneck_size, None, None,
               final_tensor_name, PLACEHOLDERS if unknown else None)
  return optimize_for_inference(graph, [final_tensor_name])


def cached_inference_graph_template(fx: FeatureExtractor,
                                    final_tensor_name: str,
                                    cache_dir: str,
                                    unknown: bool = False) -> tf1.GraphDef:
  """inference_graph_template, kept in `cache_dir` for later runs.

  The key covers the model tag (model, tensors, scaling, preprocessing), the
  output name, the TensorFlow version and the source of the modules that
  build the graph, so any change rebuilds it. A cached file that does not
  parse or holds an unsafe op is rebuilt, never used.
  """
  h = hashlib.sha1(json.dumps([fx.tag, final_tensor_name, tf.__version__]
                              + (["unknown"] if unknown else [])).encode())
  for module in (preprocess, model_module, safety):
    with open(module.__file__, "rb") as f:
      h.update(f.read())
  with open(__file__, "rb") as f:
    h.update(f.read())
  path = fs.join(cache_dir, MODULE_CACHE,
                 f"{fx.tag}.{h.hexdigest()[:12]}.export.pb")
  try:
    graph_def = tf1.GraphDef.FromString(fs.read_bytes(path))
    if not safety.find_unsafe_ops(graph_def) and graph_def.node:
      return graph_def
  except (OSError, ValueError, pb_message.DecodeError):
    pass
  graph_def = inference_graph_template(fx, final_tensor_name, unknown)
  try:
    fs.write_atomic(path, graph_def.SerializeToString())
  except OSError:
    pass  # Only costs time on the next run.
  return graph_def


def fill_final_layer(template: tf1.GraphDef, weights: np.ndarray,
                     biases: np.ndarray, unknown=None) -> tf1.GraphDef:
  """A copy of `template` with the retrained layer's placeholders replaced by
  constants: weights float32 [D, classes], biases float32 [classes], and
  the unknown class's (an UnknownClass) when the template has one."""
  graph_def = tf1.GraphDef()
  graph_def.CopyFrom(template)
  values = {WEIGHTS_NODE: np.asarray(weights, np.float32),
            BIASES_NODE: np.asarray(biases, np.float32)}
  if unknown is not None:
    values.update({
        PROTOTYPES_NODE: np.asarray(unknown.prototypes, np.float32),
        K_NODE: np.asarray(unknown.k, np.int32),
        THRESHOLD_NODE: np.asarray(unknown.threshold, np.float32),
        SCALE_NODE: np.asarray(unknown.scale, np.float32)})
  filled = set()
  for node in graph_def.node:
    if node.name in values and node.op == "Placeholder":
      value = values[node.name]
      node.op = "Const"
      node.ClearField("attr")
      node.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
      node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
      filled.add(node.name)
  if filled != set(values):
    raise ValueError(f"template lacks {set(values) - filled}")
  left = [n.name for n in graph_def.node if n.op == "Placeholder" and
          n.name in (PROTOTYPES_NODE, K_NODE, THRESHOLD_NODE, SCALE_NODE)]
  if left:
    raise ValueError(f"template has an unknown class; fill {left}")
  return graph_def


def optimize_for_inference(graph: tf.Graph,
                           outputs: Sequence[str]) -> tf1.GraphDef:
  """Strips what `outputs` do not need and folds constants (Grappler).

  Only portable rewrites are used (constant folding, arithmetic
  simplification, dependency pruning, batch norms folded into the preceding
  convolutions), so the result runs on any TensorFlow build.
  """
  # pylint: disable=g-import-not-at-top
  from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
  from tensorflow.python.grappler import tf_optimizer
  stripped = tf1.graph_util.extract_sub_graph(graph.as_graph_def(),
                                              list(outputs))
  try:
    pruned = tf.Graph()
    with pruned.as_default():
      tf1.import_graph_def(stripped, name="")
      for name in outputs:
        tf1.add_to_collection("train_op", pruned.get_operation_by_name(name))
      meta_graph = tf1.train.export_meta_graph(graph=pruned)
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.optimizers.extend(["constfold", "arithmetic", "dependency"])
    rewrite.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
    optimized = tf_optimizer.OptimizeGraph(config, meta_graph)
  except Exception as e:  # pylint: disable=broad-except
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.warning("graph optimization skipped (%s); exporting the graph "
                    "unoptimized", e)
    return stripped
  return _fold_batch_norms(optimized)


def _fold_batch_norms(graph_def: tf1.GraphDef) -> tf1.GraphDef:
  """Folds FusedBatchNorm ops that follow convolutions into their weights."""
  from tensorflow.python.tools import optimize_for_inference_lib  # pylint: disable=g-import-not-at-top
  if not any(n.op.startswith("FusedBatchNorm") for n in graph_def.node):
    return graph_def
  try:
    folded = optimize_for_inference_lib.fold_batch_norms(graph_def)
    # It rebuilds the node list only: keep the functions (the decoding loop
    # lives there) and the version stamp.
    folded.library.CopyFrom(graph_def.library)
    folded.versions.CopyFrom(graph_def.versions)
    return folded
  except Exception as e:  # pylint: disable=broad-except
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.warning("batch norm folding skipped (%s)", e)
    return graph_def


def build_float_graph(fx: FeatureExtractor, weights: np.ndarray,
                      biases: np.ndarray,
                      final_tensor_name: str = "final_result",
                      tflite_input: str = "image",
                      batch: Optional[int] = 1, unknown=None) -> tf.Graph:
  """The classifier with only one float input, [batch, H, W, 3] (for TFLite
  and TensorFlow.js): RGB in [0, 255] ("image"), or the CNN's own scaled
  input ("model_input", named as in the model, e.g. MobileNet's input)."""
  graph = tf.Graph()
  with graph.as_default():
    if tflite_input == "model_input":
      scaled = tf1.placeholder(tf.float32, [batch, *fx.input_size, 3],
                               name=model_input_name(fx))
      _add_layer(import_cnn(fx, scaled), fx.bottleneck_size, weights,
                 biases, final_tensor_name, unknown)
    else:
      image = tf1.placeholder(tf.float32, [batch, *fx.input_size, 3],
                              name=IMAGE_INPUT)
      _add_classifier(fx, image, weights, biases, final_tensor_name, unknown)
  return graph


def model_input_name(fx: FeatureExtractor) -> str:
  """The name a TFLite model taking the CNN's own input gives it: the
  model's (input for MobileNet, Mul for Inception-v3) when usable."""
  found = classic_inputs(fx).get("model_input")
  return found[:-2] if found else "model_input"


TFLITE_QUANTIZATIONS = ("none", "dynamic", "int8")
TFLITE_INPUTS = ("image", "model_input")


def tflite_model(fx: FeatureExtractor, weights: np.ndarray,
                 biases: np.ndarray, quantize: str = "none",
                 representative: Optional[np.ndarray] = None,
                 final_tensor_name: str = "final_result",
                 tflite_input: str = "image", unknown=None) -> bytes:
  """A TFLite flatbuffer of the classifier.

  Input float32 [1, H, W, 3]: RGB in [0, 255] ("image"), or scaled as
  (x - mean) / std ("model_input"); output float32 [1, classes].

  Args:
    quantize: "none" (float32), "dynamic" (8-bit weights, float compute) or
      "int8" (full-integer ops calibrated on `representative`; the input and
      output stay float32 so clients feed the same values).
    representative: float32 [n, H, W, 3] training images in [0, 255], for
      "int8".
    tflite_input: see build_float_graph.
  """
  graph = build_float_graph(fx, weights, biases, final_tensor_name,
                            tflite_input, unknown=unknown)
  if tflite_input == "model_input" and representative is not None:
    representative = (representative - fx.input_mean) / fx.input_std
  input_name = (model_input_name(fx) if tflite_input == "model_input"
                else IMAGE_INPUT)
  with tf1.Session(graph=graph) as sess:
    converter = tf1.lite.TFLiteConverter.from_session(
        sess, [graph.get_tensor_by_name(input_name + ":0")],
        [graph.get_tensor_by_name(final_tensor_name + ":0")])
    if quantize in ("dynamic", "int8"):
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":
      if representative is None or not len(representative):
        raise ValueError("int8 quantization needs representative images")

      def samples():
        for image in representative:
          yield [image[None].astype(np.float32)]
      converter.representative_dataset = samples
      converter.target_spec.supported_ops = [
          tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def write_tflite(path: str, flatbuffer: bytes, labels: Sequence[str],
                 metadata: Dict[str, object]) -> None:
  """The .tflite file, its labels (<stem>.labels.txt) and JSON (<stem>.json).

  The model carries TFLite metadata (tflite_metadata): its input's size and
  normalization, and the labels and the JSON inside, so MediaPipe Tasks
  need no other file.
  """
  labels_path = os.path.splitext(path)[0] + ".labels.txt"
  description = json.dumps(
      dict(metadata, format=METADATA_FORMAT, export="tflite",
           tflite=os.path.basename(path),
           labels=os.path.basename(labels_path)),
      indent=2, sort_keys=True) + "\n"
  flatbuffer = tflite_metadata.with_metadata(
      flatbuffer, tflite_classifier_info(metadata, labels,
                                         description.encode()))
  fs.write_atomic(path, flatbuffer, fsync=True)
  write_labels(labels_path, labels)
  fs.write_text(metadata_path(path), description, fsync=True)


def tflite_classifier_info(metadata: Dict[str, object],
                           labels: Sequence[str],
                           description_json: bytes
                           ) -> "tflite_metadata.ClassifierInfo":
  """What a .tflite export's metadata says, from its JSON description."""
  h, w = metadata["input_size"]
  inputs = metadata["inputs"]
  if "model_input" in inputs:  # --tflite_input=model_input
    mean, std = inputs["model_input"]["mean"], inputs["model_input"]["std"]
    described = inputs["model_input"]["description"]
  else:  # RGB 0..255 as it is: the model scales inside.
    mean, std = 0.0, 1.0
    described = inputs["image"]["description"]
  model = metadata.get("model") or {}
  accuracy = metadata.get("test_accuracy")
  text = (f"Image classifier of {len(labels)} classes ({', '.join(labels[:10])}"
          f"{', ...' if len(labels) > 10 else ''}), trained by retrain on "
          f"{datetime.date.today().isoformat()} by transfer learning on "
          f"{model.get('source', 'a pretrained CNN')}"
          + (f"; test accuracy {accuracy * 100:.1f}% on "
             f"{metadata.get('test_images')} images" if accuracy is not None
             else "") + ".")
  return tflite_metadata.ClassifierInfo(
      name="retrain image classifier", description=text,
      version=__version__, author="retrain",
      image=tflite_metadata.ImageInput(int(h), int(w), float(mean),
                                       float(std), described),
      output_description=("Probabilities of the classes, in the order of "
                          "the labels file."),
      labels=list(labels), description_json=description_json)


def tflite_io_description(fx: FeatureExtractor, quantize: str,
                          final_tensor_name: str,
                          tflite_input: str = "image") -> Dict[str, object]:
  h, w = fx.input_size
  if tflite_input == "model_input":
    inputs = {"model_input": {
        "name": model_input_name(fx), "dtype": "float32",
        "shape": [1, h, w, 3], "mean": fx.input_mean, "std": fx.input_std,
        "description": (f"the pretrained model's own input: RGB resized to "
                        f"{h}x{w}, scaled as (x - {fx.input_mean:g}) / "
                        f"{fx.input_std:g} by the client (the classic "
                        "codelab's apps feed (x - 128) / 128)")}}
  else:
    inputs = {"image": {
        "name": IMAGE_INPUT, "dtype": "float32", "shape": [1, h, w, 3],
        "description": (f"RGB pixel values in [0, 255], resized to {h}x{w}"
                        "; the model's scaling happens inside")}}
  return {
      "inputs": inputs,
      "output": {"name": final_tensor_name, "dtype": "float32",
                 "shape": [1, "classes"],
                 "description": "softmax probabilities in labels file order"},
      "quantization": quantize,
  }


def io_description(fx: FeatureExtractor,
                   final_tensor_name: str) -> Dict[str, object]:
  """The exact inputs and output of an exported graph, for its JSON file."""
  h, w = fx.input_size
  return {
      "inputs": {
          "image": {
              "name": IMAGE_INPUT + ":0", "dtype": "float32",
              "shape": [None, h, w, 3],
              "description": ("RGB pixel values in [0, 255], resized to "
                              f"{h}x{w}; the model's scaling (x - "
                              f"{fx.input_mean:g}) / {fx.input_std:g} "
                              "happens inside the graph")},
          "image_bytes": {
              "name": BYTES_INPUT + ":0", "dtype": "string", "shape": [None],
              "description": ("encoded JPEG, PNG, GIF, BMP or WebP files; "
                              f"decoded to RGB and resized to {h}x{w} "
                              "inside the graph")},
          **classic_input_description(fx, final_tensor_name),
      },
      "output": {"name": final_tensor_name + ":0", "dtype": "float32",
                 "shape": [None, "classes"],
                 "description": "softmax probabilities in labels file order"},
      "input_size": [h, w],
      "resize": fx.preprocessing.describe(),
      "input_scaling": {"mean": fx.input_mean, "std": fx.input_std},
  }


def classic_input_description(fx: FeatureExtractor, final_tensor_name: str
                              ) -> Dict[str, Dict[str, object]]:
  """The JSON entries of the classic inputs a frozen export keeps."""
  h, w = fx.input_size
  found = classic_inputs(fx, final_tensor_name)
  out = {}
  if "model_input" in found:
    out["model_input"] = {
        "name": found["model_input"], "dtype": "float32",
        "shape": [None, h, w, 3], "mean": fx.input_mean, "std": fx.input_std,
        "description": (f"the pretrained model's own input: RGB resized to "
                        f"{h}x{w}, scaled as (x - {fx.input_mean:g}) / "
                        f"{fx.input_std:g} by the client (as the classic "
                        "tool's clients do)")}
  if "jpeg" in found:
    out["jpeg"] = {
        "name": found["jpeg"], "dtype": "string", "shape": [],
        "description": ("one encoded image, as the classic Inception-v3 "
                        "graph's JPEG input took it (a [batch] vector works "
                        "too); decoded and resized inside the graph as "
                        "image_bytes is")}
  return out


def write_frozen_graph(path: str, graph_def: tf1.GraphDef,
                       metadata: Dict[str, object],
                       labels_path: Optional[str] = None) -> None:
  """Writes the graph and, beside it, its JSON metadata.

  `labels_path` (the labels file) is recorded relative to the JSON file.
  """
  fs.write_atomic(path, graph_def.SerializeToString(), fsync=True)
  meta = dict(metadata, format=METADATA_FORMAT, export="frozen_graph",
              graph=os.path.basename(path))
  if labels_path:
    meta["labels"] = relative_to(labels_path, metadata_path(path))
  fs.write_text(metadata_path(path),
                    json.dumps(meta, indent=2, sort_keys=True) + "\n",
                    fsync=True)


def write_labels(path: str, labels: Sequence[str]) -> None:
  """One label per line, in output index order."""
  fs.write_text(path, "".join(label + "\n" for label in labels),
                    fsync=True)


def write_saved_model(export_dir: str, graph_def: tf1.GraphDef,
                      labels: Sequence[str],
                      final_tensor_name: str = "final_result",
                      metadata: Optional[Dict[str, object]] = None) -> None:
  """A SavedModel for TF Serving, replacing `export_dir` only once complete.

  Signatures (tag "serve"):
    serving_default: image_bytes (string [batch]) ->
      probabilities (float32 [batch, classes]), label (string [batch]),
      class_index (int64 [batch]).
    serving_images: image (float32 [batch, H, W, 3] in [0, 255]) -> the same.
  Beside saved_model.pb: labels.txt and retrain.json (its description).
  """
  with staged_dir(export_dir, _SAVED_MODEL_LAST) as target:
    graph = tf.Graph()
    with graph.as_default():
      tf1.import_graph_def(graph_def, name="")
      probabilities = graph.get_tensor_by_name(final_tensor_name + ":0")
      class_index = tf.argmax(probabilities, 1, name="class_index")
      label = tf.gather(tf.constant(list(labels)), class_index, name="label")
      outputs = {"probabilities": probabilities, "label": label,
                 "class_index": class_index}
      signatures = {
          "serving_default": tf1.saved_model.predict_signature_def(
              {"image_bytes": graph.get_tensor_by_name(BYTES_INPUT + ":0")},
              outputs),
          "serving_images": tf1.saved_model.predict_signature_def(
              {"image": graph.get_tensor_by_name(IMAGE_INPUT + ":0")},
              outputs),
      }
      with tf1.Session(graph=graph) as sess:
        builder = tf1.saved_model.Builder(target)
        builder.add_meta_graph_and_variables(
            sess, [tf1.saved_model.SERVING], signature_def_map=signatures,
            strip_default_attrs=True)
        builder.save()
    write_labels(os.path.join(target, SAVED_MODEL_LABELS), labels)
    fs.write_text(
        os.path.join(target, SAVED_MODEL_METADATA),
        json.dumps(dict(metadata or {}, format=METADATA_FORMAT,
                        export="saved_model",
                        labels=SAVED_MODEL_LABELS,
                        signatures={
                            "serving_default": {
                                "inputs": {"image_bytes": "string [batch]"},
                                "outputs": ["probabilities", "label",
                                            "class_index"]},
                            "serving_images": {
                                "inputs": {"image": "float32 [batch, H, W, "
                                                    "3], [0, 255]"},
                                "outputs": ["probabilities", "label",
                                            "class_index"]}}),
                   indent=2, sort_keys=True) + "\n")


# Uploaded last, in this order: a reader that finds saved_model.pb finds
# the variables it needs.
_SAVED_MODEL_LAST = (SAVED_MODEL_METADATA, "saved_model.pb")


@contextlib.contextmanager
def staged_dir(export_dir: str, last: Sequence[str] = ()) -> Iterator[str]:
  """A new local folder to fill; on success it replaces `export_dir` whole
  (a local rename, or an upload with the files named in `last` last, in
  that order, for gs://, s3://, ...). On failure nothing changes there."""
  remote = fs.has_scheme(export_dir)
  export_dir = fs.abspath(export_dir.rstrip("/") or "/")
  if remote:  # Built locally, then uploaded (see _upload_dir).
    staging = tempfile.mkdtemp(prefix="retrain_export.")
  else:
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent,
                               prefix="." + os.path.basename(export_dir) + ".")
  try:
    target = os.path.join(staging, "model")
    os.makedirs(target)
    yield target
    if remote:
      _upload_dir(target, export_dir, last)
    else:
      _replace_dir(target, export_dir)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def _upload_dir(local: str, dest: str, last: Sequence[str]) -> None:
  """Copies the local folder to a remote one, file by file (each whole),
  those in `last` last; then removes the files an older model left there."""
  last = tuple(last)
  names = sorted(os.path.relpath(os.path.join(root, f), local)
                 for root, _, files in os.walk(local) for f in files)
  names.sort(key=lambda n: (n in last, last.index(n) if n in last else 0,
                            n))
  store = fs.for_path(dest)
  for name in names:
    store.upload(os.path.join(local, name),
                 fs.join(dest, *name.split(os.sep)))
  keep = {n.replace(os.sep, "/") for n in names}
  for top, _, files in list(store.walk(dest)):
    rel = top[len(dest):].strip("/")
    for f in files:
      name = f"{rel}/{f}" if rel else f
      if name not in keep and not f.startswith("."):
        store.remove(fs.join(top, f))


def _replace_dir(new: str, dest: str) -> None:
  """Moves folder `new` to `dest`; an old `dest` is removed only afterwards."""
  if not os.path.exists(dest):
    os.replace(new, dest)
    return
  old = tempfile.mkdtemp(dir=os.path.dirname(dest),
                         prefix="." + os.path.basename(dest) + ".old.")
  os.rmdir(old)
  os.replace(dest, old)
  try:
    os.replace(new, dest)
  except OSError:
    os.replace(old, dest)
    raise
  shutil.rmtree(old, ignore_errors=True)


def is_saved_model_dir(path: str) -> bool:
  return any(fs.isfile(fs.join(path, f))
             for f in ("saved_model.pb", "saved_model.pbtxt"))
