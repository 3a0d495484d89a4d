"""Every export of retrain loaded for inference: one small Classifier class
per kind (frozen graph, SavedModel, TFLite, ONNX), chosen by
`load_classifier`.

Each reads the JSON retrain wrote beside the export (an ONNX model: its own
metadata) for input names, size and scaling. TensorFlow is imported only
when a kind needs it: a .tflite model runs on LiteRT with Pillow decoding
where TensorFlow is missing, and an .onnx model on ONNX Runtime with
Pillow decoding, never importing TensorFlow.
"""

import json
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from retrain import tfimport
from retrain.deploy import metadata
from retrain.errors import UserError


def _read_json(path: str, what: str) -> dict:
  if not os.path.isfile(path):
    raise UserError(f"{what}: {path} is missing; use a model exported by "
                    "retrain, with the files it wrote beside it")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except ValueError as e:
    raise UserError(f"{path}: not a retrain export description ({e})")


def _labels_path(flag: Optional[str], meta: dict, json_path: str,
                 default: Optional[str] = None) -> Optional[str]:
  """--labels, else the file the JSON names (relative to the JSON file)."""
  if flag:
    return flag
  recorded = meta.get("labels") or default
  return metadata.resolve(recorded, json_path) if recorded else None


def _read_labels(path: Optional[str]) -> List[str]:
  if not path or not os.path.isfile(path):
    raise UserError(f"labels file {path!r} not found; pass --labels")
  with open(path, encoding="utf-8") as f:
    return [line.rstrip("\n") for line in f if line.strip()]


class Classifier:
  """An export loaded for inference. Subclasses implement `_predict`."""

  labels: List[str]
  uses_tensorflow = True  # Its decoding may raise TensorFlow's errors.

  def _predict(self, blobs: List[bytes]) -> np.ndarray:
    """Encoded images -> probabilities [n, classes]; may raise OpError."""
    raise NotImplementedError

  def classify(self, paths: Sequence[str]
               ) -> Tuple[List[str], np.ndarray, List[Tuple[str, str]]]:
    """(classified paths, probabilities [n, classes], [(path, reason)] skipped)."""
    op_error, op_error_reason = (_tf_errors() if self.uses_tensorflow
                                 else (_BadImage, str))
    done, rows, skipped = [], [], []
    for path in paths:
      try:
        with open(path, "rb") as f:
          data = f.read()
      except OSError as e:
        skipped.append((path, f"cannot read it ({e.strerror})"))
        continue
      try:
        rows.append(self._predict([data])[0])
        done.append(path)
      except op_error as e:
        skipped.append((path, f"cannot decode it ({op_error_reason(e)})"))
      except _BadImage as e:
        skipped.append((path, str(e)))
    probs = np.array(rows, np.float32).reshape(len(rows), len(self.labels))
    return done, probs, skipped


class _BadImage(Exception):
  pass


def _tensorflow():
  """The tensorflow module, or None where it is not installed (a device
  with LiteRT only)."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return tf


def _tf_errors():
  """(TensorFlow's OpError, a one-line reason of one), or stand-ins when
  TensorFlow is not installed (then no TensorFlow op can fail)."""
  tf = _tensorflow()
  if tf is None:
    return _BadImage, str
  from retrain.features.extract import op_error_reason  # pylint: disable=g-import-not-at-top
  return tf.errors.OpError, op_error_reason


class GraphClassifier(Classifier):
  """A frozen graph, fed encoded bytes at the input its JSON names."""

  def __init__(self, graph_path: str, labels_path: Optional[str] = None):
    tf = _import_tensorflow(graph_path)
    json_path = metadata.metadata_path(graph_path)
    meta = _read_json(json_path, f"--model={graph_path}")
    try:
      bytes_input = meta["inputs"]["image_bytes"]["name"]
      output = meta["output"]["name"]
    except KeyError as e:
      raise UserError(f"--model={graph_path}: its JSON lacks {e}")
    self.labels = _read_labels(_labels_path(labels_path, meta, json_path))
    graph_def = tf.compat.v1.GraphDef()
    with open(graph_path, "rb") as f:
      try:
        graph_def.ParseFromString(f.read())
      except Exception:  # pylint: disable=broad-except
        raise UserError(f"--model={graph_path}: not a GraphDef file")
    graph = tf.Graph()
    with graph.as_default():
      tf.compat.v1.import_graph_def(graph_def, name="")
    self._session = tf.compat.v1.Session(graph=graph)
    self._in = graph.get_tensor_by_name(bytes_input)
    self._out = graph.get_tensor_by_name(output)
    _check_outputs(self._out.shape[-1], self.labels, graph_path)

  def _predict(self, blobs):
    return self._session.run(self._out, {self._in: blobs})


class SavedModelClassifier(Classifier):
  """A SavedModel's serving_default signature (encoded bytes in)."""

  def __init__(self, path: str, labels_path: Optional[str] = None):
    tf = _import_tensorflow(path)
    json_path = os.path.join(path, metadata.SAVED_MODEL_METADATA)
    meta = _read_json(json_path, f"--model={path}")
    self.labels = _read_labels(_labels_path(labels_path, meta, json_path,
                                            "labels.txt"))
    self._tf = tf
    self._fn = tf.saved_model.load(path).signatures["serving_default"]

  def _predict(self, blobs):
    out = self._fn(image_bytes=self._tf.constant(blobs))
    return out["probabilities"].numpy()


def _import_tensorflow(model: str):
  tf = _tensorflow()
  if tf is None:
    raise UserError(f"--model={model}: running a frozen graph or SavedModel "
                    "needs TensorFlow (pip install tensorflow); a .tflite "
                    "export runs without it")
  return tf


def _rule(meta: Dict[str, object]) -> Tuple[int, float]:
  """(jpeg_dct_keep, antialias_over) of the resize rule an export's JSON
  records."""
  recorded = (meta.get("model") or {}).get("preprocessing")
  if not recorded:  # Written before the rule was recorded (retrain <= v2).
    return 2, 1.0
  return int(recorded["jpeg_dct_keep"]), float(recorded["antialias_over"])


def _preprocessing(meta: Dict[str, object]):
  """The decode/resize rule an export's JSON records, as preprocess's."""
  from retrain.data import preprocess  # pylint: disable=g-import-not-at-top
  return preprocess.Preprocessing(*_rule(meta))


def tflite_interpreter(path: str):
  """(interpreter, runtime name) for a .tflite file: LiteRT first
  (ai_edge_litert), else TensorFlow's tf.lite."""
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
    runtime = "ai_edge_litert"
  except ImportError:
    tf = _tensorflow()
    if tf is None:
      raise UserError(f"--model={path}: running a .tflite model needs LiteRT"
                      ": pip install ai-edge-litert pillow")
    Interpreter = tf.lite.Interpreter  # pylint: disable=invalid-name
    runtime = "tf.lite"
  try:
    # Quiet: tf.lite's notice about LiteRT, and both runtimes' note on
    # stderr that they created their CPU delegate.
    with warnings.catch_warnings(), tfimport.quiet_stderr():
      warnings.simplefilter("ignore")
      interpreter = Interpreter(model_path=path)
      interpreter.allocate_tensors()
  except (ValueError, RuntimeError) as e:
    raise UserError(f"--model={path}: not a TFLite model "
                    f"({str(e).strip().splitlines()[0][:120]})")
  return interpreter, runtime


class TFLiteClassifier(Classifier):
  """A .tflite model; images decoded and resized as in training.

  Decoding uses TensorFlow's ops when TensorFlow is installed (the very ops
  of training), else Pillow by the same rule.
  """

  def __init__(self, path: str, labels_path: Optional[str] = None):
    json_path = metadata.metadata_path(path)
    meta = _read_json(json_path, f"--model={path}")
    self.labels = _read_labels(_labels_path(labels_path, meta, json_path))
    self._interpreter, self.runtime = tflite_interpreter(path)
    self._input = self._interpreter.get_input_details()[0]
    self._output = self._interpreter.get_output_details()[0]
    height, width = (int(d) for d in self._input["shape"][1:3])
    # A model taking the CNN's own input (--tflite_input=model_input) is fed
    # pixels scaled as its JSON says; the default takes them as they are.
    scaled = (meta.get("inputs") or {}).get("model_input")
    self._scaling = ((float(scaled["mean"]), float(scaled["std"]))
                     if scaled and "image" not in meta["inputs"] else None)
    if _tensorflow() is not None:
      from retrain.features.extract import ImageDecoder  # pylint: disable=g-import-not-at-top
      self._decoder = ImageDecoder((height, width), rule=_preprocessing(meta))
    else:
      try:
        from retrain.data.pil_preprocess import PilDecoder  # pylint: disable=g-import-not-at-top
        self._decoder = PilDecoder((height, width), *_rule(meta))
      except ImportError:
        raise UserError(f"--model={path}: without TensorFlow, images are "
                        "decoded with Pillow: pip install pillow")
    _check_outputs(self._output["shape"][-1], self.labels, path)

  def _predict(self, blobs):
    rows = []
    for blob in blobs:
      image, error = self._decoder.decode_bytes(blob)
      if image is None:
        raise _BadImage(error)
      if self._scaling:
        image = (image - self._scaling[0]) / self._scaling[1]
      self._interpreter.set_tensor(self._input["index"],
                                   image[None].astype(np.float32))
      self._interpreter.invoke()
      rows.append(np.array(
          self._interpreter.get_tensor(self._output["index"])[0]))
    return np.array(rows)


class OnnxClassifier(Classifier):
  """An .onnx model retrain exported, on ONNX Runtime: labels, input size
  and the resize rule read from the model's metadata, images decoded with
  Pillow by that rule (TensorFlow is never imported)."""

  uses_tensorflow = False

  def __init__(self, path: str, labels_path: Optional[str] = None):
    try:
      import onnxruntime  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise UserError(f"--model={path}: running an .onnx model needs ONNX "
                      "Runtime: pip install onnxruntime pillow")
    try:
      self._session = onnxruntime.InferenceSession(
          path, providers=["CPUExecutionProvider"])
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"--model={path}: not an ONNX model "
                      f"({str(e).strip().splitlines()[0][:120]})")
    props = self._session.get_modelmeta().custom_metadata_map
    if "input_size" not in props:
      raise UserError(f"--model={path}: no input_size in its metadata; use "
                      "an .onnx model retrain exported (--onnx_output)")
    self.labels = (_read_labels(labels_path) if labels_path else
                   [l for l in props.get("labels", "").split("\n") if l])
    height, width = (int(v) for v in props["input_size"].split(","))
    rule = _rule({"model": json.loads(props.get("model", "{}"))})
    try:
      from retrain.data.pil_preprocess import PilDecoder  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise UserError(f"--model={path}: images are decoded with Pillow: pip "
                      "install pillow")
    self._decoder = PilDecoder((height, width), *rule)
    self._input = self._session.get_inputs()[0].name
    _check_outputs(self._session.get_outputs()[0].shape[-1], self.labels,
                   path)

  def _predict(self, blobs):
    images = []
    for blob in blobs:
      image, error = self._decoder.decode_bytes(blob)
      if image is None:
        raise _BadImage(error)
      images.append(image)
    return self._session.run(None, {self._input: np.stack(images).astype(
        np.float32)})[0]


def _check_outputs(outputs, labels, path):
  if outputs != len(labels):
    raise UserError(f"--model={path}: {outputs} outputs but {len(labels)} "
                    "labels; pass the matching --labels")


def _is_tflite(path: str) -> bool:
  """A .tflite file, or one in TFLite's format under another name (the
  classic codelab's graph.lite): its file identifier says so."""
  if path.lower().endswith((".tflite", ".lite")):
    return True
  with open(path, "rb") as f:
    return f.read(8)[4:] == b"TFL3"


def load_classifier(model: str, labels: Optional[str] = None) -> Classifier:
  """The right Classifier for a .pb graph, SavedModel folder, .tflite or
  .onnx file."""
  if os.path.isdir(model):
    return SavedModelClassifier(model, labels)
  if not os.path.isfile(model):
    raise UserError(f"--model={model}: no such file or folder")
  if _is_tflite(model):
    return TFLiteClassifier(model, labels)
  if model.lower().endswith(".onnx"):
    return OnnxClassifier(model, labels)
  return GraphClassifier(model, labels)
