"""Runs exports in a fresh process that imports only TensorFlow and numpy.

  python tests/export_check.py graph|saved_model PATH IMAGES_JSON OUT.npz

Writes probabilities computed from the encoded files (image_bytes input) and,
for graphs, from float images prepared as the JSON beside the graph says.
Deliberately independent of retrain: it proves the exports stand alone.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top


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
  h, w = meta["input_size"]
  floats = np.stack([
      tf.clip_by_value(tf.image.resize(
          tf.cast(tf.io.decode_image(b, channels=3, expand_animations=False),
                  tf.float32), [h, w], method=meta["resize"]["method"],
          antialias=meta["resize"]["antialias"]), 0, 255).numpy()
      for b in blobs])
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
  fn = graph_probabilities if kind == "graph" else saved_model_probabilities
  np.savez(out, **fn(path, paths))
  assert not any(m == "retrain" or m.startswith("retrain.")
                 for m in sys.modules)


if __name__ == "__main__":
  main()
