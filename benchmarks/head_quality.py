"""The new layer's accuracy against a tuned linear classifier, side by side.

  python benchmarks/head_quality.py
      [--models=mobilenet_v1_075_224,efficientnet_lite0,efficientnet_lite2,
            efficientnet_lite2+mobilenet_v1_075_224,...]
      [--datasets=flower_photos_dev,cats_dogs_small] [--folds=5]
      [--stage2] [--fine_tune_layers=2] [--work_dir=DIR]

k-fold cross-validation on each shared data set (fold k's test photos are
those whose name hashes to k; of the rest, 1 in 8 validate and the others
train, as in benchmarks/fine_tune.py). A model named A+B is one
classifier on several models (as --graph=A,B trains it). On the same cached
bottlenecks of each fold:

- retrain stage 1 with the classic training (--weight_decay=0
  --label_smoothing=0),
- retrain stage 1 at default settings (weight decay and learning rate
  chosen by cross-validation of the training and validation photos),
- scikit-learn LogisticRegression (lbfgs, multinomial; LogisticRegressionCV)
  trained on the training and validation photos ("LR"), and on the
  training photos only, which are what stage 1's final layer learns from
  (stage 1 uses the validation photos to choose its setting), each with C
  chosen among 13 values (1e-3 .. 1e3) by 5-fold cross-validation inside
  them (the table names the scikit-learn version: its results moved
  between releases),
- with --stage2, retrain stage 2 (--fine_tune_layers, default settings:
  the model after the last step of the cosine schedule, or stage 1's when
  that did not beat it on validation), timed with its cut activations
  cached (a first run computes them before timing).

Prints each fold's numbers as JSON, then a table of mean test accuracy and
seconds per fold (training only; the bottlenecks are cached before timing).
Needs scikit-learn (in .[test]; not a dependency of retrain).
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

from absl import app, flags  # pylint: disable=g-import-not-at-top

flags.DEFINE_list("models", ["mobilenet_v1_075_224", "efficientnet_lite0",
                             "efficientnet_lite2",
                             "efficientnet_lite2+mobilenet_v1_075_224",
                             "efficientnet_lite2+mobilenet_v1_075_224+"
                             "efficientnet_lite0"],
                  "Model folders of ../shared/models; A+B: one classifier "
                  "on several (retrain --graph=A,B).")
flags.DEFINE_list("datasets", ["flower_photos_dev", "cats_dogs_small"],
                  "Data set folders of ../shared/datasets.")
flags.DEFINE_integer("folds", 5, "Cross-validation folds.")
flags.DEFINE_bool("logreg", True, "Also the scikit-learn columns (minutes "
                  "per fold on 2 000 photos of several models).")
flags.DEFINE_bool("stage2", False, "Also fine-tune (stage 2) in every fold.")
flags.DEFINE_integer("fine_tune_layers", 2, "--fine_tune_layers for stage 2.")
flags.DEFINE_string("work_dir", "", "Cache folder (kept between runs); "
                    "default: a temporary folder.")
FLAGS = flags.FLAGS

C_GRID = [10.0 ** (e / 2) for e in range(-6, 7)]  # 1e-3 .. 1e3.


def tuned_logistic_regression(x, y, test_x, seed=0):
  """(test predictions, chosen C) of LogisticRegression with C chosen by
  5-fold cross-validation on x, y."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sklearn.linear_model import LogisticRegressionCV  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import StratifiedKFold  # pylint: disable=g-import-not-at-top
  search = LogisticRegressionCV(
      Cs=C_GRID, cv=StratifiedKFold(5, shuffle=True, random_state=seed),
      max_iter=3000, n_jobs=1)
  search.fit(x, y)
  return search.predict(test_x), float(np.ravel(search.C_)[0])


def run_one(model_name: str, dataset: str, work: str):
  """The folds of one (model, data set); yields one dict per fold."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from retrain import pipeline, tfimport  # pylint: disable=g-import-not-at-top
  from retrain.config import HParams, RunConfig  # pylint: disable=g-import-not-at-top
  from retrain.data import images  # pylint: disable=g-import-not-at-top
  from retrain.features.model import load_feature_extractor  # pylint: disable=g-import-not-at-top
  from retrain.training import finetune  # pylint: disable=g-import-not-at-top
  tfimport.quiet_tensorflow()
  cache_dir = os.path.join(work, "cache")
  config = RunConfig(
      image_dir=os.path.join(common.shared_dir(), "datasets", dataset),
      bottleneck_dir=cache_dir, summaries_dir="", checkpoint_path="",
      output_graph=os.path.join(work, "unused.pb"),
      output_labels=os.path.join(work, "unused.txt"),
      intermediate_store_frequency=0)
  options = [common.shared_model_options(m) for m in model_name.split("+")]
  fx = load_feature_extractor(options, cache_dir)
  no_template = concurrent.futures.Future()
  no_template.set_result(None)
  for k in range(FLAGS.folds):
    inputs = pipeline.Inputs(common.fold_lists(config.image_dir, k,
                                               FLAGS.folds), fx)
    data = pipeline.compute_bottlenecks(inputs, config, 0)
    sets = data.sets
    row = dict(model=model_name, dataset=dataset, fold=k,
               train=len(sets[images.TRAINING]),
               validation=len(sets[images.VALIDATION]),
               test=len(sets[images.TESTING]))
    truth = sets[images.TESTING].y
    for name, hparams in (
        ("classic", HParams(weight_decay=0.0, label_smoothing=0.0)),
        ("stage1", HParams())):
      start = time.monotonic()
      with pipeline.Summaries("") as summaries:
        layer = pipeline.train_layer(inputs, data, config, hparams,
                                     no_template, summaries)
      row[name] = float(np.mean(
          np.argmax(layer.test.probabilities, 1) == layer.test.truth))
      row[f"{name}_seconds"] = time.monotonic() - start
      if name == "stage1":
        row["regularization"] = layer.regularization.chosen._asdict()
    if not FLAGS.logreg:
      print(json.dumps(row), flush=True)
      yield row
      continue
    start = time.monotonic()
    x = np.concatenate([sets[images.TRAINING].in_memory().x,
                        sets[images.VALIDATION].in_memory().x])
    y = np.concatenate([sets[images.TRAINING].y, sets[images.VALIDATION].y])
    predicted, c = tuned_logistic_regression(
        x, y, sets[images.TESTING].in_memory().x)
    row["logreg"] = float(np.mean(predicted == truth))
    row["logreg_C"] = c
    row["logreg_seconds"] = time.monotonic() - start
    # The same on the training images only: what stage 1's final layer
    # learns from (stage 1 uses the validation images to choose only).
    start = time.monotonic()
    predicted, c = tuned_logistic_regression(
        sets[images.TRAINING].in_memory().x, sets[images.TRAINING].y,
        sets[images.TESTING].in_memory().x)
    row["logreg_train"] = float(np.mean(predicted == truth))
    row["logreg_train_C"] = c
    row["logreg_train_seconds"] = time.monotonic() - start
    if FLAGS.stage2:
      hparams = HParams(fine_tune_layers=FLAGS.fine_tune_layers)
      finetune.cut_vectors(inputs.image_lists, fx, config, hparams)  # Cached.
      with pipeline.Summaries("") as summaries:
        layer = pipeline.train_layer(inputs, data, config, hparams,
                                     no_template, summaries)
        stage = pipeline.fine_tune_top(inputs, layer, config, hparams,
                                       summaries)
      tuned = (stage.result.test_probabilities if stage.result.improved
               else layer.test.probabilities)
      row["stage2"] = float(np.mean(np.argmax(tuned, 1) == truth))
      row["stage2_improved"] = bool(stage.result.improved)
      row["stage2_seconds"] = stage.seconds  # Stage 2 alone, warm cache.
    print(json.dumps(row), flush=True)
    yield row


def main(_):
  import tempfile  # pylint: disable=g-import-not-at-top
  try:
    import sklearn  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    sys.exit("head_quality.py needs scikit-learn: pip install scikit-learn")
  if FLAGS.stage2 and any("+" in m for m in FLAGS.models):
    sys.exit("--stage2: fine-tuning works on one model; list models "
             "without '+'")
  work = FLAGS.work_dir or tempfile.mkdtemp(prefix="retrain_head_quality_")
  rows = []
  ways = ["classic", "stage1"] + (
      ["logreg", "logreg_train"] if FLAGS.logreg else []) + (
      ["stage2"] if FLAGS.stage2 else [])
  for dataset in FLAGS.datasets:
    for model in FLAGS.models:
      folds = list(run_one(model, dataset, work))
      mean = lambda key: sum(f[key] for f in folds) / len(folds)  # pylint: disable=cell-var-from-loop
      rows.append([dataset, model, str(folds[0]["train"] + folds[0][
          "validation"] + folds[0]["test"])] +
                  [f"{100 * mean(w):.1f}" for w in ways] +
                  [f"{100 * (mean('stage1') - mean(lr)):+.1f}"
                   for lr in ("logreg", "logreg_train") if lr in ways] +
                  ([f"{100 * (mean('stage2') - mean('stage1')):+.1f}",
                    f"{sum(f['stage2_improved'] for f in folds)}/"
                    f"{len(folds)}"] if FLAGS.stage2 else []) +
                  [" / ".join(f"{mean(w + '_seconds'):.1f}" for w in ways)])
  import sklearn  # pylint: disable=g-import-not-at-top
  print(f"\n{FLAGS.folds}-fold cross-validation, mean test accuracy (%); "
        f"{os.cpu_count()} cores; seconds per fold, training only (cached "
        f"bottlenecks); scikit-learn {sklearn.__version__}")
  print(common.table(rows, [
      "data set", "model", "images", "stage 1, classic", "stage 1"] +
      (["LR, training + validation", "LR, training only"]
       if FLAGS.logreg else []) +
      (["stage 2"] if FLAGS.stage2 else []) +
      (["stage 1 - LR", "stage 1 - LR training only"]
       if FLAGS.logreg else []) +
      (["stage 2 - stage 1", "stage 2 kept"] if FLAGS.stage2 else []) +
      ["seconds (" + " / ".join(ways) + ")"]))


if __name__ == "__main__":
  app.run(main)
