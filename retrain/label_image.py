"""Classify images with a graph exported by retrain.

  python -m retrain.label_image --graph=/tmp/output_graph.pb \
      --image=photo.jpg [--image=more.png ...] [--top_k=5] [--format=text]

The input names, size and scaling come from the JSON file beside the graph,
so no preprocessing flag is needed. The labels file is the one named there
unless --labels is given.
"""

import csv
import io
import json
import os
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np

from retrain import cli
from retrain.errors import UserError


def metadata_path(graph_path: str) -> str:
  return os.path.splitext(graph_path)[0] + ".json"


class ExportedClassifier:
  """A frozen graph written by retrain, loaded for inference."""

  def __init__(self, graph_path: str, labels_path: Optional[str] = None):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self._tf = tf
    meta_path = metadata_path(graph_path)
    if not os.path.isfile(graph_path):
      raise UserError(f"--graph={graph_path}: no such file")
    if not os.path.isfile(meta_path):
      raise UserError(f"--graph={graph_path}: {meta_path} is missing; "
                      "classify with a graph exported by retrain, with its "
                      "JSON file beside it")
    try:
      with open(meta_path, encoding="utf-8") as f:
        self.metadata = json.load(f)
      self.bytes_input = self.metadata["inputs"]["image_bytes"]["name"]
      self.output = self.metadata["output"]["name"]
    except (ValueError, KeyError) as e:
      raise UserError(f"{meta_path}: not a retrain export description ({e})")
    labels_path = labels_path or self.metadata.get("labels")
    if not labels_path or not os.path.isfile(labels_path):
      raise UserError(f"labels file {labels_path!r} not found; pass --labels")
    with open(labels_path, encoding="utf-8") as f:
      self.labels = [line.rstrip("\n") for line in f if line.strip()]
    graph_def = tf.compat.v1.GraphDef()
    with open(graph_path, "rb") as f:
      try:
        graph_def.ParseFromString(f.read())
      except Exception:  # pylint: disable=broad-except
        raise UserError(f"--graph={graph_path}: not a GraphDef file")
    self.graph = tf.Graph()
    with self.graph.as_default():
      tf.compat.v1.import_graph_def(graph_def, name="")
    self.session = tf.compat.v1.Session(graph=self.graph)
    self._out = self.graph.get_tensor_by_name(self.output)
    self._in = self.graph.get_tensor_by_name(self.bytes_input)
    if self._out.shape[-1] != len(self.labels):
      raise UserError(f"{labels_path} has {len(self.labels)} labels but the "
                      f"graph has {self._out.shape[-1]} outputs")

  def classify(self, paths: Sequence[str]
               ) -> Tuple[List[str], np.ndarray, List[Tuple[str, str]]]:
    """(classified paths, probabilities [n, classes], [(path, reason)] skipped)."""
    done, rows, skipped = [], [], []
    for path in paths:
      try:
        with open(path, "rb") as f:
          data = f.read()
        rows.append(self.session.run(self._out, {self._in: [data]})[0])
        done.append(path)
      except OSError as e:
        skipped.append((path, f"cannot read it ({e.strerror})"))
      except self._tf.errors.OpError as e:
        from retrain.extract import op_error_reason  # pylint: disable=g-import-not-at-top
        skipped.append((path, f"cannot decode it ({op_error_reason(e)})"))
    probs = np.array(rows, np.float32).reshape(len(rows), len(self.labels))
    return done, probs, skipped


def format_results(paths: Sequence[str], probs: np.ndarray,
                   labels: Sequence[str], top_k: int, fmt: str) -> str:
  """Top-k labels per image as text, CSV or JSON."""
  k = len(labels) if top_k <= 0 else min(top_k, len(labels))
  out = io.StringIO()
  if fmt == "json":
    json.dump([{"image": p,
                "top": [{"label": labels[i], "probability": float(row[i])}
                        for i in np.argsort(-row, kind="stable")[:k]]}
               for p, row in zip(paths, probs)], out, indent=2)
    out.write("\n")
  elif fmt == "csv":
    writer = csv.writer(out)
    writer.writerow(["image", "rank", "label", "probability"])
    for p, row in zip(paths, probs):
      for rank, i in enumerate(np.argsort(-row, kind="stable")[:k], 1):
        writer.writerow([p, rank, labels[i], f"{row[i]:.6f}"])
  else:
    for p, row in zip(paths, probs):
      if len(paths) > 1:
        out.write(f"{p}\n")
      for i in np.argsort(-row, kind="stable")[:k]:
        out.write(f"{labels[i]} {row[i]:.5f}\n")
  return out.getvalue()


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("graph", None, "Frozen graph written by retrain.")
  flags.DEFINE_string("labels", None, "Labels file (default: the one named "
                      "in the graph's JSON file).")
  flags.DEFINE_multi_string("image", [], "Image to classify (repeatable).")
  flags.DEFINE_integer("top_k", 5, "How many labels to print (0: all).")
  flags.DEFINE_enum("format", "text", ["text", "csv", "json"],
                    "Output format.")
  return flags.FLAGS


def main(argv) -> int:
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS

  def job() -> int:
    images = list(f.image) + list(argv[1:])
    if not f.graph:
      raise UserError("--graph is required: the .pb file retrain wrote")
    if not images:
      raise UserError("no image given: pass --image=PATH")
    classifier = ExportedClassifier(f.graph, f.labels)
    paths, probs, skipped = classifier.classify(images)
    for path, reason in skipped:
      sys.stderr.write(f"label_image: skipped {path}: {reason}\n")
    sys.stdout.write(format_results(paths, probs, classifier.labels, f.top_k,
                                    f.format))
    return 0 if paths else 1
  return cli.run_main(job, "label_image")


def run() -> None:
  _define_flags()
  cli.absl_entry(main, "label_image")()


if __name__ == "__main__":
  run()
