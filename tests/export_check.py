"""Runs exports in a fresh process that imports only TensorFlow and numpy.

  python tests/export_check.py graph|saved_model|tflite|classic|onnx PATH \
      IMAGES_JSON OUT.npz

Writes probabilities computed from the encoded files (image_bytes input) and,
for graphs and TFLite, from float images prepared as the JSON beside the
export says.
Deliberately independent of retrain: it proves the exports stand alone.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top


def _prepare(blob, meta):
  """One float input, made by following the JSON's resize rule."""
  h, w = meta["input_size"]
  rule = meta["resize"]
  ratio = 1
  if rule["jpeg_dct_keep"] and tf.io.is_jpeg(blob):
    ih, iw, _ = tf.image.extract_jpeg_shape(blob).numpy()
    for r in (8, 4, 2):
      if ih // r >= rule["jpeg_dct_keep"] * h and (
          iw // r >= rule["jpeg_dct_keep"] * w):
        ratio = r
        break
  if ratio > 1:
    image = tf.io.decode_jpeg(blob, channels=3, ratio=ratio)
  else:
    image = tf.io.decode_image(blob, channels=3, expand_animations=False)
  shrink = max(image.shape[0] / h, image.shape[1] / w)
  return tf.clip_by_value(tf.image.resize(
      tf.cast(image, tf.float32), [h, w], method=rule["method"],
      antialias=bool(shrink > rule["antialias_over"])), 0, 255).numpy()


def _float_images(blobs, meta):
  """Float inputs prepared exactly as the export's JSON describes."""
  return np.stack([_prepare(b, meta) for b in blobs])


def tflite_probabilities(path, paths):
  with open(os.path.splitext(path)[0] + ".json") as f:
    meta = json.load(f)
  interpreter = tf.lite.Interpreter(model_path=path)
  interpreter.allocate_tensors()
  inp = interpreter.get_input_details()[0]
  out = interpreter.get_output_details()[0]
  rows = []
  for image in _float_images([open(p, "rb").read() for p in paths], meta):
    interpreter.set_tensor(inp["index"], image[None])
    interpreter.invoke()
    rows.append(interpreter.get_tensor(out["index"])[0])
  return {"float": np.array(rows)}


def _load_graph(graph_path):
  """(the frozen graph, imported; its JSON description)."""
  with open(os.path.splitext(graph_path)[0] + ".json") as f:
    meta = json.load(f)
  graph_def = tf.compat.v1.GraphDef()
  with open(graph_path, "rb") as f:
    graph_def.ParseFromString(f.read())
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.import_graph_def(graph_def, name="")
  return graph, meta


def graph_probabilities(graph_path, paths):
  graph, meta = _load_graph(graph_path)
  blobs = [open(p, "rb").read() for p in paths]
  floats = _float_images(blobs, meta)
  with tf.compat.v1.Session(graph=graph) as sess:
    by_bytes = sess.run(meta["output"]["name"],
                        {meta["inputs"]["image_bytes"]["name"]: blobs})
    by_float = sess.run(meta["output"]["name"],
                        {meta["inputs"]["image"]["name"]: floats})
  return {"bytes": by_bytes, "float": by_float}


def classic_probabilities(graph_path, paths):
  """As a client written for the classic tool: it knows the pretrained
  model's input (input:0, Mul:0) and its scaling, and final_result:0.

  "classic": its own preprocessing (full decode, plain bilinear resize, as
  the classic label_image.py); "same": the export's own resize rule, then
  the client's scaling; "jpeg": one JPEG at a time into
  DecodeJpeg/contents:0 (when the export has it).
  """
  graph, meta = _load_graph(graph_path)
  model_input = meta["inputs"]["model_input"]
  mean, std = model_input["mean"], model_input["std"]
  h, w = meta["input_size"]
  blobs = [open(p, "rb").read() for p in paths]
  classic = np.stack([tf.compat.v1.image.resize_bilinear(
      tf.cast(tf.io.decode_image(b, channels=3, expand_animations=False),
              tf.float32)[None], [h, w])[0].numpy() for b in blobs])
  same = _float_images(blobs, meta)
  out = {}
  with tf.compat.v1.Session(graph=graph) as sess:
    for key, images in (("classic", classic), ("same", same)):
      out[key] = sess.run("final_result:0", {
          model_input["name"]: (images - mean) / std})
    jpeg = meta["inputs"].get("jpeg")
    if jpeg:
      out["jpeg"] = np.concatenate([
          sess.run("final_result:0", {jpeg["name"]: b}) for b in blobs])
  return out


def onnx_probabilities(path, paths):
  """ONNX Runtime on the .onnx file alone: labels, input size and resize
  rule from its metadata; float images made as for the graph's "float"."""
  import onnxruntime  # pylint: disable=g-import-not-at-top
  session = onnxruntime.InferenceSession(path,
                                         providers=["CPUExecutionProvider"])
  props = session.get_modelmeta().custom_metadata_map
  meta = {"input_size": [int(v) for v in props["input_size"].split(",")],
          "resize": json.loads(props["resize"])}
  floats = _float_images([open(p, "rb").read() for p in paths], meta)
  probabilities = session.run(["probabilities"], {"image": floats})[0]
  return {"float": probabilities,
          "labels": np.array(props["labels"].split("\n"))}


def saved_model_probabilities(path, paths):
  model = tf.saved_model.load(path)
  blobs = tf.constant([open(p, "rb").read() for p in paths])
  out = model.signatures["serving_default"](image_bytes=blobs)
  return {"bytes": out["probabilities"].numpy(),
          "label": out["label"].numpy().astype(str)}


def main():
  kind, path, images_json, out = sys.argv[1:5]
  with open(images_json) as f:
    paths = json.load(f)
  assert "retrain" not in sys.modules
  fn = {"graph": graph_probabilities, "saved_model": saved_model_probabilities,
        "tflite": tflite_probabilities, "onnx": onnx_probabilities,
        "classic": classic_probabilities}[kind]
  np.savez(out, **fn(path, paths))
  assert not any(m == "retrain" or m.startswith("retrain.")
                 for m in sys.modules)


if __name__ == "__main__":
  main()
