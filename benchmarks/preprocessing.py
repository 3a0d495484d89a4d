"""What --preprocessing=fast costs in accuracy, and what it saves in time.

  python benchmarks/preprocessing.py [--image_dir=DIR] [--graph=PB]
                                     [--upscale=4] [--folds=5]

For two photo sets, the dev flowers as they are and the same photos enlarged
--upscale times and re-encoded as JPEG (camera-sized files, where DCT scaling
and the antialiasing rule really trigger), and for each preprocessing rule
(exact = full-size decode, always antialiased; fast = the default), prints:
decode + resize throughput on one thread, end-to-end extraction throughput,
how many JPEGs were DCT-scaled, and the accuracy of the retrained layer by
--folds-fold cross-validation over every image (each image is predicted once
by a layer trained without it), plus the share of images on which the two
rules' predictions agree.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

from absl import app, flags  # pylint: disable=g-import-not-at-top

common.define_model_flags(tfhub=False)
flags.DEFINE_integer("upscale", 4, "Enlargement of the camera-sized set "
                     "(0: skip that set).")
flags.DEFINE_integer("folds", 5, "Cross-validation folds.")
flags.DEFINE_integer("steps", 4000, "Training steps per fold.")
flags.DEFINE_integer("limit", 0, "Use only this many images (0: all).")
FLAGS = flags.FLAGS


def enlarged_copy(image_dir: str, out_dir: str, factor: int,
                  paths) -> list:
  """Writes every photo enlarged `factor` times (JPEG q90); returns paths."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = []
  for path in paths:
    rel = os.path.relpath(path, image_dir)
    target = os.path.join(out_dir, os.path.splitext(rel)[0] + ".jpg")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with Image.open(path) as im:
      im = im.convert("RGB")
      im.resize((im.width * factor, im.height * factor),
                Image.BICUBIC).save(target, quality=90)
    out.append(target)
  return out


def cross_validated_predictions(x, y, classes: int, folds: int, steps: int):
  """Each image's predicted class from a layer trained on the other folds."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from retrain.config import HParams  # pylint: disable=g-import-not-at-top
  from retrain.training import train  # pylint: disable=g-import-not-at-top
  fold = np.arange(len(y)) % folds
  predicted = np.zeros(len(y), np.int64)
  hp = HParams(how_many_training_steps=steps)
  for k in range(folds):
    tr, te = fold != k, fold == k
    tg = train.build_training_graph(x.shape[1], classes, hp)
    with tf.compat.v1.Session(graph=tg.graph) as sess:
      train.train(tg, sess, train.LabeledBottlenecks(x[tr], y[tr], []),
                  train.LabeledBottlenecks(x[te][:0], y[te][:0], []),
                  classes, hp)
      predicted[te] = train.predict(tg, sess, x[te]).argmax(1)
  return predicted


def main(_):
  from retrain import tfimport  # pylint: disable=g-import-not-at-top
  tfimport.quiet_tensorflow()
  import numpy as np  # pylint: disable=g-import-not-at-top
  from retrain.data import imageinfo, images
  from retrain.features import model
  from retrain.features.extract import BottleneckExtractor, ImageDecoder
  image_dir = common.dev_images(FLAGS.image_dir)
  options, _ = common.model_choice(FLAGS.graph)
  lists = images.list_images(image_dir, 0, 0)
  paths, labels = [], []
  for index, c in enumerate(lists.classes):
    for rel in c.training:
      paths.append(lists.path(c, rel))
      labels.append(index)
  rng = np.random.default_rng(0)
  order = rng.permutation(len(paths))[:FLAGS.limit or None]
  paths = [paths[i] for i in order]
  y = np.array(labels)[order]
  work = tempfile.mkdtemp(prefix="retrain_preprocessing_")
  sets = [("dev photos", paths)]
  if FLAGS.upscale:
    sets.append((f"dev photos x{FLAGS.upscale} (camera-sized JPEGs)",
                 enlarged_copy(image_dir, work, FLAGS.upscale, paths)))

  rows = []
  for set_name, set_paths in sets:
    blobs = []
    for p in set_paths:
      with open(p, "rb") as f:
        blobs.append(f.read())
    sizes = [imageinfo.sniff(b) for b in blobs]
    predictions = {}
    for rule_name in ("exact", "fast"):
      fx = model.load_feature_extractor(options._replace(
          preprocessing=rule_name))
      rule = fx.preprocessing
      scaled = sum(1 for s in sizes if s and s.format == "jpeg" and
                   imageinfo.jpeg_scale_ratio(s.height, s.width,
                                              *fx.input_size,
                                              rule.jpeg_dct_keep) > 1)
      decoder = ImageDecoder(fx.input_size, rule=rule)
      decoder.decode_bytes(blobs[0])
      start = time.perf_counter()
      for b in blobs:
        decoder.decode_bytes(b)
      decode_rate = len(blobs) / (time.perf_counter() - start)
      decoder.close()
      with BottleneckExtractor(fx) as extractor:
        start = time.perf_counter()
        results = sorted(extractor.compute(set_paths), key=lambda r: r[0])
        extract_rate = len(set_paths) / (time.perf_counter() - start)
      vectors = np.stack([v for _, v, _ in results])
      predicted = cross_validated_predictions(vectors, y, len(lists.classes),
                                              FLAGS.folds, FLAGS.steps)
      predictions[rule_name] = predicted
      accuracy = (predicted == y).mean() * 100
      note = ""
      if rule_name != "exact":
        delta = accuracy - (predictions["exact"] == y).mean() * 100
        agree = (predicted == predictions["exact"]).mean() * 100
        note = f"{delta:+.1f} points; {agree:.1f}% same predictions"
      rows.append([set_name, rule_name, f"{decode_rate:.0f}/s",
                   f"{extract_rate:.0f}/s", f"{scaled}/{len(blobs)}",
                   f"{accuracy:.1f}%", note])
  print(f"\n{len(paths)} images, model {options.graph} "
        f"({FLAGS.folds}-fold cross-validation, {FLAGS.steps} steps):\n")
  print(common.table(rows, ["images", "preprocessing", "decode, 1 thread",
                            "extraction", "DCT-scaled", "accuracy",
                            "fast vs exact"]))


if __name__ == "__main__":
  app.run(main)
