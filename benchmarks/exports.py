"""Size and per-image latency of every export, from one training run.

  python benchmarks/exports.py [--image_dir=DIR] [--graph=PB[,PB...] | --tfhub_module=DIR]

Defaults: ../shared/datasets/flower_photos_dev and the MobileNet v1 0.25/128
frozen graph. Trains once (warm cache after the first call), exports the
frozen graph, the SavedModel, TFLite float/dynamic/int8 and ONNX (needs
the .[onnx] extra), then classifies
the test images one at a time with each, as a client would (encoded file in,
probabilities out), and prints a table; with mediapipe installed, also
MediaPipe Tasks on the float .tflite. --graph=A,B: one classifier on
several models.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

from absl import app, flags  # pylint: disable=g-import-not-at-top

common.define_model_flags(tfhub=True)

flags.DEFINE_string("work_dir", None, "Where outputs and cache go (default: "
                    "a temporary folder).")
FLAGS = flags.FLAGS


def main(_):
  from retrain import tfimport  # pylint: disable=g-import-not-at-top
  tfimport.quiet_tensorflow()
  import numpy as np  # pylint: disable=g-import-not-at-top
  from retrain import pipeline  # pylint: disable=g-import-not-at-top
  from retrain.config import HParams, RunConfig
  from retrain.label_image import load_classifier
  image_dir = common.dev_images(FLAGS.image_dir)
  options, _ = common.model_choice(FLAGS.graph, FLAGS.tfhub_module)
  work = FLAGS.work_dir or tempfile.mkdtemp(prefix="retrain_bench_")
  base = RunConfig(image_dir=image_dir,
                   bottleneck_dir=os.path.join(work, "bottlenecks"),
                   output_graph=os.path.join(work, "graph.pb"),
                   output_labels=os.path.join(work, "labels.txt"),
                   saved_model_dir=os.path.join(work, "saved_model"),
                   summaries_dir="", checkpoint_path="")
  exports = {"frozen graph": base.output_graph,
             "SavedModel": base.saved_model_dir}
  result = None
  for quantize in ("none", "dynamic", "int8"):
    path = os.path.join(work, f"model_{quantize}.tflite")
    config = base._replace(tflite_output=path, tflite_quantize=quantize)
    if quantize != "none":
      config = config._replace(saved_model_dir="")
    else:  # ONNX, run by ONNX Runtime from the .onnx file alone (Pillow).
      config = config._replace(onnx_output=os.path.join(work, "model.onnx"))
      exports["ONNX (ONNX Runtime, Pillow)"] = config.onnx_output
    result = pipeline.run(config, HParams(), options)
    exports[f"TFLite {quantize}"] = path
  paths = result.test_paths
  reference = result.test_probabilities
  rows = []
  for name, path in exports.items():
    classifier = load_classifier(path)
    classifier.classify(paths[:2])  # Warm up.
    start = time.perf_counter()
    done, probs, _ = classifier.classify(paths)
    per_image = (time.perf_counter() - start) / len(done) * 1000
    if os.path.isdir(path):
      size = sum(os.path.getsize(os.path.join(r, f))
                 for r, _, fs in os.walk(path) for f in fs)
    else:
      size = os.path.getsize(path)
    agree = np.mean(probs.argmax(1) == reference.argmax(1))
    acc = np.mean(probs.argmax(1) == result.test_truth)
    rows.append([name, f"{size / 1e6:.2f}", f"{per_image:.1f}",
                 f"{np.abs(probs - reference).max():.1e}",
                 f"{agree * 100:.1f}%", f"{acc * 100:.1f}%"])
  mediapipe = _mediapipe_row(exports["TFLite none"], paths, result)
  if mediapipe:
    rows.append(mediapipe)
  print(f"\nModel {result.model['source']}, {len(paths)} test images, one "
        "at a time (decode + resize + model):\n")
  print(common.table(rows, ["export", "MB", "ms/image", "max abs diff vs session",
                            "top-1 = session", "test accuracy"]))


def _mediapipe_row(path, paths, result):
  """MediaPipe Tasks' ImageClassifier on the float .tflite, from the photo
  files (its own decoding and resizing), as an app runs it; None without
  mediapipe."""
  try:
    import mediapipe as mp  # pylint: disable=g-import-not-at-top
    from mediapipe.tasks.python import BaseOptions, vision  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  import numpy as np  # pylint: disable=g-import-not-at-top
  options = vision.ImageClassifierOptions(
      base_options=BaseOptions(model_asset_path=path),
      max_results=len(result.labels))
  with vision.ImageClassifier.create_from_options(options) as classifier:
    classifier.classify(mp.Image.create_from_file(paths[0]))  # Warm up.
    probs = []
    start = time.perf_counter()
    for photo in paths:
      categories = classifier.classify(
          mp.Image.create_from_file(photo)).classifications[0].categories
      score = {c.category_name: c.score for c in categories}
      probs.append([score[label] for label in result.labels])
    per_image = (time.perf_counter() - start) / len(paths) * 1000
  probs = np.array(probs, np.float32)
  reference = result.test_probabilities
  return ["TFLite none in MediaPipe Tasks (its own resize)",
          f"{os.path.getsize(path) / 1e6:.2f}", f"{per_image:.1f}",
          f"{np.abs(probs - reference).max():.1e}",
          f"{np.mean(probs.argmax(1) == reference.argmax(1)) * 100:.1f}%",
          f"{np.mean(probs.argmax(1) == result.test_truth) * 100:.1f}%"]


if __name__ == "__main__":
  app.run(main)
