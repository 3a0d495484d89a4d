"""The regularization search's cost, the new way beside the old, in one run.

  python benchmarks/search.py [--models=mobilenet_v1_025_224,...]
      [--datasets=flower_photos_dev,cats_dogs_small] [--work_dir=DIR]

For each model and shared data set (the run's own split; bottlenecks cached
first, not timed) and for synthetic 2048-d vectors (Inception-v3's size:
rectified Gaussian classes, 2 000 images split 80/10/10, 5 classes), prints
the seconds of `regularization.choose` (the median of three, nothing kept
in the cache), what it chose and scored on, and the cost of the search it
replaced on the same vectors: 12 settings (6 decays x 2 rates) x 5 folds of
SGD layers side by side for 4000 steps (side_by_side.train_layers, as
before), timed once.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

from absl import app, flags  # pylint: disable=g-import-not-at-top

flags.DEFINE_list("models", ["mobilenet_v1_025_224", "mobilenet_v1_075_224",
                             "efficientnet_lite2"],
                  "Model folders of ../shared/models.")
flags.DEFINE_list("datasets", ["flower_photos_dev", "cats_dogs_small"],
                  "Data set folders of ../shared/datasets.")
flags.DEFINE_string("work_dir", "", "Cache folder (kept between runs); "
                    "default: a temporary folder.")
flags.DEFINE_integer("synthetic_images", 2000, "Images of 2048-d vectors.")
flags.DEFINE_integer("old_steps", 4000, "Steps of the replaced search.")
FLAGS = flags.FLAGS

# The search this one replaced: its grid, folds and steps.
OLD_DECAYS = (0.0, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
OLD_RATES = (0.01, 0.1)
OLD_FOLDS = 5


def _median_seconds(fn, times=3):
  seconds = []
  for _ in range(times):
    start = time.perf_counter()
    result = fn()
    seconds.append(time.perf_counter() - start)
  return sorted(seconds)[len(seconds) // 2], result


def _old_search_seconds(x, y, class_count):
  """One run of the replaced search's training: every setting and fold
  side by side, 4000 SGD steps on shared batches."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from retrain.config import HParams  # pylint: disable=g-import-not-at-top
  from retrain.training import side_by_side  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  fold = side_by_side.fold_of(y, OLD_FOLDS, rng)
  settings = [(d, r) for r in OLD_RATES for d in OLD_DECAYS]
  k = len(settings)
  rows = side_by_side.batches(y, class_count, HParams(), FLAGS.old_steps,
                              rng)
  start = time.perf_counter()
  side_by_side.train_layers(
      x, y, rows, class_count, k * OLD_FOLDS,
      [r for _ in range(OLD_FOLDS) for _, r in settings],
      [d for _ in range(OLD_FOLDS) for d, _ in settings], 0.0, 0, fold,
      np.repeat(np.arange(OLD_FOLDS), k))
  return time.perf_counter() - start


def _row(name, photos, train_set, validation_set, class_count):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from retrain.config import HParams  # pylint: disable=g-import-not-at-top
  from retrain.training import regularization  # pylint: disable=g-import-not-at-top
  seconds, choice = _median_seconds(lambda: regularization.choose(
      train_set, validation_set, class_count, HParams()))
  x = np.concatenate([train_set.in_memory().x, validation_set.in_memory().x])
  y = np.concatenate([train_set.y, validation_set.y])
  old = _old_search_seconds(x, y, class_count)
  chosen = choice.chosen
  return [name, str(photos), str(x.shape[1]), str(class_count),
          f"{seconds:.2f} s", f"{old:.1f} s", f"{old / seconds:.0f}x",
          f"{chosen.weight_decay:g} / {chosen.learning_rate:g}",
          choice.scored_on.split(" of the")[0]]


def main(_):
  import tempfile  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from retrain import pipeline, tfimport  # pylint: disable=g-import-not-at-top
  from retrain.config import RunConfig  # pylint: disable=g-import-not-at-top
  from retrain.data import images  # pylint: disable=g-import-not-at-top
  from retrain.features.model import load_feature_extractor  # pylint: disable=g-import-not-at-top
  from retrain.features.sets import LabeledBottlenecks  # pylint: disable=g-import-not-at-top
  tfimport.quiet_tensorflow()
  work = FLAGS.work_dir or tempfile.mkdtemp(prefix="retrain_search_")
  rows = []
  for dataset in FLAGS.datasets:
    image_dir = os.path.join(common.shared_dir(), "datasets", dataset)
    for model in FLAGS.models:
      config = RunConfig(image_dir=image_dir,
                         bottleneck_dir=os.path.join(work, "cache"))
      inputs = pipeline.load_inputs(config, common.shared_model_options(model))
      data = pipeline.compute_bottlenecks(inputs, config, 0)
      sets = data.sets
      photos = sum(len(s) for s in sets.values())
      rows.append(_row(f"{dataset}, {model}", photos, sets[images.TRAINING],
                       sets[images.VALIDATION], len(inputs.labels)))
      print(rows[-1], flush=True)
  # Inception-v3-sized vectors: 2048-d, non-negative, 5 classes.
  rng = np.random.default_rng(0)
  means = np.abs(rng.normal(0, 0.5, (5, 2048)))

  def synthetic(n, seed):
    r = np.random.default_rng(seed)
    y = r.integers(0, 5, n)
    x = np.maximum(means[y] + r.normal(0, 0.5, (n, 2048)), 0)
    return LabeledBottlenecks(x.astype(np.float32), y.astype(np.int64),
                              [f"{seed}/{i}.jpg" for i in range(n)])
  n = FLAGS.synthetic_images
  rows.append(_row("synthetic Inception-sized", n, synthetic(n * 8 // 10, 1),
                   synthetic(n // 10, 2), 5))
  print(f"\nregularization.choose, median of 3, {os.cpu_count()} cores; "
        "before: the replaced search's 60 SGD layers x "
        f"{FLAGS.old_steps} steps, once:")
  print(common.table(rows, [
      "vectors", "photos", "dims", "classes", "search", "before",
      "before / search", "chosen decay / rate", "scored on"]))


if __name__ == "__main__":
  app.run(main)
