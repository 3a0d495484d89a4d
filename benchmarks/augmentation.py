"""Cached augmentation against on-the-fly distortion, and its accuracy effect.

  python benchmarks/augmentation.py [--image_dir=DIR] [--graph=PB] [--steps=4000]

The classic tool, given a distortion flag, pushed every training image of
every step through decoding, distortion and the CNN, one image per
session.run. This script times that way of working over --classic_steps
steps (per-image runs, as the classic tool did) and scales it to --steps,
beside retrain's cached augmentation (--augmentation_copies=5, cold cache,
whole run), and prints test accuracy with and without augmentation.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

from absl import app, flags  # pylint: disable=g-import-not-at-top

common.define_model_flags(tfhub=False)

flags.DEFINE_integer("steps", 4000, "Training steps of both runs.")
flags.DEFINE_integer("classic_steps", 10, "Steps actually timed for the "
                     "on-the-fly way (then scaled to --steps).")
flags.DEFINE_integer("copies", 5, "--augmentation_copies.")
FLAGS = flags.FLAGS

DISTORTIONS = dict(flip_left_right=True, random_crop=10, random_scale=10,
                   random_brightness=10)


def main(_):
  from retrain import tfimport  # pylint: disable=g-import-not-at-top
  tfimport.quiet_tensorflow()
  import numpy as np  # pylint: disable=g-import-not-at-top
  from retrain import pipeline
  from retrain.config import HParams, RunConfig
  from retrain.data import images, preprocess
  from retrain.features import model
  from retrain.features.extract import BottleneckExtractor, augmentation_seed
  image_dir = common.dev_images(FLAGS.image_dir)
  options, _ = common.model_choice(FLAGS.graph)
  hparams = HParams(how_many_training_steps=FLAGS.steps)
  work = tempfile.mkdtemp(prefix="retrain_aug_bench_")
  base = RunConfig(image_dir=image_dir, summaries_dir="", checkpoint_path="",
                   bottleneck_dir=os.path.join(work, "bottlenecks"),
                   output_graph=os.path.join(work, "graph.pb"),
                   output_labels=os.path.join(work, "labels.txt"))

  start = time.perf_counter()
  plain = pipeline.run(base, hparams, options)
  plain_time = time.perf_counter() - start
  start = time.perf_counter()
  augmented = pipeline.run(base._replace(augmentation_copies=FLAGS.copies,
                                         **DISTORTIONS), hparams, options)
  augmented_time = time.perf_counter() - start

  # The on-the-fly way: every step decodes, distorts and runs the CNN on
  # train_batch_size images, one session.run each.
  fx = model.load_feature_extractor(options)
  lists = images.list_images(image_dir, 10, 10)
  train_paths = [(lists.path(c, rel), f"{c.dir_name}/{rel}")
                 for c in lists.classes for rel in c.training]
  rng = np.random.default_rng(0)
  distortions = preprocess.Distortions(**DISTORTIONS)
  with BottleneckExtractor(fx, distortions=distortions) as extractor:
    start = time.perf_counter()
    for step in range(FLAGS.classic_steps):
      for i in rng.integers(len(train_paths), size=hparams.train_batch_size):
        path, key = train_paths[i]
        image, _ = extractor.decoder.decode(
            path, augmentation_seed(0, key, step + 1))
        extractor.bottlenecks(image[None])
    per_step = (time.perf_counter() - start) / FLAGS.classic_steps
  on_the_fly = per_step * FLAGS.steps

  rows = [
      ["no augmentation (cold cache)", f"{plain_time:.1f}",
       f"{plain.test_accuracy * 100:.1f}%"],
      [f"cached augmentation, {FLAGS.copies} copies (cold cache)",
       f"{augmented_time:.1f}", f"{augmented.test_accuracy * 100:.1f}%"],
      [f"on-the-fly distortion (timed {FLAGS.classic_steps} steps, scaled)",
       f"{on_the_fly:.0f}", "n/a"],
  ]
  print(f"\n{len(plain.test_paths)} test images, {FLAGS.steps} steps, "
        f"distortions {DISTORTIONS}:\n")
  print(common.table(rows, ["run", "seconds", "test accuracy"]))
  print(f"\ncached augmentation is {on_the_fly / augmented_time:.0f}x faster "
        "than on-the-fly distortion")


if __name__ == "__main__":
  app.run(main)
