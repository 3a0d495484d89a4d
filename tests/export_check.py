"""Runs exports in a fresh process that imports only TensorFlow and numpy.

  python tests/export_check.py graph|saved_model|tflite PATH IMAGES_JSON OUT.npz

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


def _float_images(blobs, meta):
  """Float inputs prepared exactly as the export's JSON describes."""
  h, w = meta["input_size"]
  return np.stack([
      tf.clip_by_value(tf.image.resize(
          tf.cast(tf.io.decode_image(b, channels=3, expand_animations=False),
                  tf.float32), [h, w], method=meta["resize"]["method"],
          antialias=meta["resize"]["antialias"]), 0, 255).numpy()
      for b in blobs])


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


def graph_probabilities(graph_path, paths):
  with open(os.path.splitext(graph_path)[0] + ".json") as f:
    meta = json.load(f)
  graph_def = tf.compat.v1.GraphDef()
  with open(graph_path, "rb") as f:
    graph_def.ParseFromString(f.read())
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.import_graph_def(graph_def, name="")
  blobs = [open(p, "rb").read() for p in paths]
  floats = _float_images(blobs, meta)
  with tf.compat.v1.Session(graph=graph) as sess:
    by_bytes = sess.run(meta["output"]["name"],
                        {meta["inputs"]["image_bytes"]["name"]: blobs})
    by_float = sess.run(meta["output"]["name"],
                        {meta["inputs"]["image"]["name"]: floats})
  return {"bytes": by_bytes, "float": by_float}


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
        "tflite": tflite_probabilities}[kind]
  np.savez(out, **fn(path, paths))
  assert not any(m == "retrain" or m.startswith("retrain.")
                 for m in sys.modules)


if __name__ == "__main__":
  main()
