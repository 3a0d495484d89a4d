"""Classify images with any export of retrain: frozen graph, SavedModel, TFLite.

  python -m retrain.label_image --model=/tmp/output_graph.pb --image=photo.jpg
  python -m retrain.label_image --model=export/saved_model --image=photos/
  python -m retrain.label_image --model=model.tflite --image=a.jpg --image=b.png \
      --format=csv

--model names a .pb graph (--graph is the classic name for it), a SavedModel
folder or a .tflite file. --image names files or folders (searched
recursively), and may be repeated. Input names, size and scaling come from the
JSON file retrain wrote beside the export, so no preprocessing flag is ever
needed; the labels come from the file it names (relative to the JSON file),
or --labels.

A .tflite model runs on LiteRT (`ai_edge_litert`) when it is installed, else
on TensorFlow's tf.lite; without TensorFlow, images are decoded with Pillow
by the same rule (retrain/data/pil_preprocess.py), so a device needs only
`pip install ai-edge-litert pillow` and retrain.
"""

import csv
import io
import json
import os
import sys
from typing import List, Sequence

import numpy as np

from retrain import cli
from retrain.data.images import is_image_name
from retrain.deploy.classifiers import load_classifier
from retrain.errors import UserError


def collect_images(args: Sequence[str]) -> List[str]:
  """Image files named by `args`: files as given, folders searched."""
  found = []
  for arg in args:
    if os.path.isdir(arg):
      for root, dirs, files in os.walk(arg):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files)
                  if is_image_name(f)]
    else:
      found.append(arg)
  return found


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


# Its flags by what a user is doing (filled by _define_flags).
GROUPS = cli.FlagGroups()

USAGE = """\
label_image: classify photos with a model retrain exported.

  python -m retrain.label_image --model=graph.pb --image=photo.jpg [flags]
  (or: label_image ...; --model may be a .pb, a SavedModel folder or a
  .tflite file; images may also follow the flags as arguments)
"""


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  GROUPS.group("The model")
  flags.DEFINE_string("model", None, "Export to use: a .pb frozen graph, a "
                      "SavedModel folder or a .tflite file.")
  flags.DEFINE_string("graph", None, "Frozen graph (same as --model).")
  flags.DEFINE_string("labels", None, "Labels file (default: the one the "
                      "export's JSON names).")
  GROUPS.group("The photos")
  flags.DEFINE_multi_string("image", [], "Image file or folder (repeatable).")
  GROUPS.group("The output")
  flags.DEFINE_integer("top_k", 5, "How many labels to print (0: all).")
  flags.DEFINE_enum("format", "text", ["text", "csv", "json"],
                    "Output format.")
  GROUPS.end()
  return flags.FLAGS


def main(argv) -> int:
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS

  def job() -> int:
    if f.model and f.graph:
      raise UserError("--model and --graph both given; pass one")
    model = f.model or f.graph
    if not model:
      raise UserError("--model is required: the .pb, SavedModel folder or "
                      ".tflite file retrain wrote")
    images = collect_images(list(f.image) + list(argv[1:]))
    if not images:
      raise UserError("no image given: pass --image=FILE_OR_FOLDER")
    classifier = load_classifier(model, f.labels)
    paths, probs, skipped = classifier.classify(images)
    for path, reason in skipped:
      sys.stderr.write(f"label_image: skipped {path}: {reason}\n")
    sys.stdout.write(format_results(paths, probs, classifier.labels, f.top_k,
                                    f.format))
    return 0 if paths else 1
  return cli.run_main(job, "label_image")


def run() -> None:
  _define_flags()
  cli.absl_entry(main, "label_image", tensorflow_optional=True,
                 help_text=lambda: GROUPS.help_text(USAGE))()


if __name__ == "__main__":
  run()
