"""The new layer's weight decay and learning rate (and label smoothing),
chosen on held-out cross entropy when the flags leave them at -1
(training/regularization.py, training/side_by_side.py)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from retrain import pipeline
from retrain.config import HParams, ModelOptions
from retrain.features.sets import LabeledBottlenecks
from retrain.training import regularization, schedules, side_by_side, train
from tests import helpers

tf1 = tf.compat.v1


def _blobs(n_per_class, d=64, classes=3, noise=1.0, seed=0):
  """Gaussian classes whose means differ in a few of d dimensions: with few
  training points, an unregularized layer fits the noise."""
  means = np.zeros([classes, d], np.float32)
  means[:, :4] = np.random.default_rng(0).normal(0, 1.0, [classes, 4])
  rng = np.random.default_rng(seed + 1)
  y = np.repeat(np.arange(classes), n_per_class)
  x = (means[y] + rng.normal(0, noise, [len(y), d])).astype(np.float32)
  return LabeledBottlenecks(x, y.astype(np.int64), [f"{i}.jpg"
                                                      for i in range(len(y))])


def _trained(train_set, validation_set, hparams):
  """(weights, biases) of train.train with these hparams."""
  tg = train.build_training_graph(train_set.x.shape[1], 3, hparams)
  with tf1.Session(graph=tg.graph) as session:
    train.train(tg, session, train_set, validation_set, 3, hparams)
    return train.final_layer(tg, session)


def _cross_entropy(x, y, w, b):
  logits = x @ w + b
  logits -= logits.max(1, keepdims=True)
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  return float(-log_p[np.arange(len(y)), y].mean())


HP = HParams(how_many_training_steps=600, learning_rate=0.05,
             validation_batch_size=-1)


def test_side_by_side_layers_train_as_the_real_training_does():
  """Each of the search's layers ends where train.train ends with its
  setting (same batches; only the tiny random initial weights differ)."""
  train_set, val = _blobs(20), _blobs(100, seed=1)
  settings = [regularization.Setting(0.0, 0.0, 0.05),
              regularization.Setting(0.03, 0.0, 0.05),
              regularization.Setting(0.0, 0.1, 0.05),
              regularization.Setting(0.0, 0.0, 0.5)]
  xent, accuracy = regularization.held_out(
      train_set.x, train_set.y, val.x, val.y, 3, settings, HP)
  for k, setting in enumerate(settings):
    # As the pipeline trains with a choice (on the search's schedule).
    w, b = _trained(train_set, val, regularization.resolved(
        HP, regularization.Choice(setting)))
    assert abs(_cross_entropy(val.x, val.y, w, b) - xent[k]) < 2e-3, setting
    assert abs(np.mean(np.argmax(val.x @ w + b, 1) == val.y) -
               accuracy[k]) <= 0.02
  assert xent[1] < xent[0]  # Decay helps on these few, noisy points.


def test_cross_validation_scores_each_image_by_layers_that_never_saw_it():
  """On labels that are pure noise, a layer fits its training rows, but
  the cross-validated accuracy stays at chance; on real classes it is near
  what a layer trained apart scores on new points."""
  noise = _blobs(40, d=256)
  shuffled = np.random.default_rng(5).permutation(noise.y)
  settings = [regularization.Setting(0.0, 0.0, 0.5)]
  _, fitted = regularization.held_out(noise.x, shuffled, noise.x, shuffled,
                                      3, settings, HP)
  _, crossed = regularization.cross_validate(noise.x, shuffled, 3, settings,
                                             HP)
  assert fitted[0] > 0.9 and crossed[0] < 0.5, (fitted, crossed)
  real, test = _blobs(40), _blobs(300, seed=2)
  _, crossed = regularization.cross_validate(real.x, real.y, 3, settings, HP)
  _, apart = regularization.held_out(real.x, real.y, test.x, test.y, 3,
                                     settings, HP)
  assert abs(crossed[0] - apart[0]) < 0.1, (crossed, apart)


def test_fold_layers_learn_only_from_the_other_folds():
  """side_by_side.train_layers with a fold held out: the layer is the one
  trained on the other rows alone (same batches, those rows masked)."""
  data = _blobs(30)
  fold = side_by_side.fold_of(data.y, 3, np.random.default_rng(0))
  assert sorted(np.bincount(fold)) == [30, 30, 30]
  for c in range(3):  # Stratified: each class spread over the folds.
    assert list(np.bincount(fold[data.y == c])) == [10, 10, 10]
  rows = np.arange(len(data.y))[None, :].repeat(5, 0).astype(np.int32)
  both = side_by_side.train_layers(data.x, data.y, rows, 3, 2, 0.5,
                                   fold=fold, held_out=[-1, 1])
  keep = np.flatnonzero(fold != 1)
  alone = side_by_side.train_layers(data.x[keep], data.y[keep],
                                    rows[:, :len(keep)], 3, 1, 0.5)
  # Same full-batch steps from (near) zero: the masked layer equals the
  # one trained on the other folds' rows, to the initial weights' size.
  np.testing.assert_allclose(both.w[:, 1], alone.w[:, 0], atol=5e-3)
  assert np.abs(both.w[:, 0] - alone.w[:, 0]).max() > 0.05


def test_a_too_small_learning_rate_is_raised_by_the_search():
  """With a rate too small for 600 steps, a larger one of the grid
  reaches a lower held-out cross entropy and is chosen."""
  train_set, val = _blobs(100), _blobs(100, seed=1)
  slow = HP._replace(learning_rate=0.001)
  choice = regularization.choose(train_set, val, 3, slow)
  assert {s.learning_rate for s in choice.tried} == {0.001, 0.01}
  assert choice.chosen.learning_rate == 0.01, choice.describe()
  assert regularization.resolved(slow, choice).learning_rate == 0.01
  # A rate that makes SGD diverge scores infinite and is never chosen.
  wild = regularization.cross_validate(
      train_set.x * 1e3, train_set.y, 3,
      [regularization.Setting(0.0, 0.0, 0.05),
       regularization.Setting(0.0, 0.0, 50.0)], HP)[0]
  assert not np.isfinite(wild[1]) or wild[1] > wild[0]


def test_the_search_picks_the_lowest_held_out_cross_entropy():
  train_set, val = _blobs(20), _blobs(100, seed=1)
  choice = regularization.choose(train_set, val, 3, HP)
  assert choice.why == "searched"
  assert sorted({s.weight_decay for s in choice.tried}) == list(
      regularization.WEIGHT_DECAYS)
  assert len(choice.tried) == len(regularization.WEIGHT_DECAYS) * len(
      regularization.LEARNING_RATE_SCALES)
  assert choice.scored_on == ("5-fold cross-validation of the 360 training "
                              "and validation images")
  best = int(np.argmin(choice.cross_entropy))
  assert choice.chosen == choice.tried[best]
  assert choice.chosen.weight_decay > 0
  # The layer trained with the choice beats the classic one on held-out
  # points of the same classes.
  test = _blobs(300, seed=2)
  chosen = _trained(train_set, val, regularization.resolved(HP, choice))
  classic = _trained(train_set, val, HP._replace(weight_decay=0.0))
  assert (_cross_entropy(test.x, test.y, *chosen) <
          _cross_entropy(test.x, test.y, *classic))
  assert np.linalg.norm(chosen[0]) < np.linalg.norm(classic[0])
  text = choice.describe()
  assert "chosen of 12 settings by cross entropy on 5-fold" in text
  assert f"weight decay {choice.chosen.weight_decay:g}" in text


def test_a_long_run_searches_at_most_max_search_steps():
  """--how_many_training_steps=10000000 (a run meant to be stopped by hand)
  does not search for 10 million steps first."""
  train_set, val = _blobs(20), _blobs(100, seed=1)
  choice = regularization.choose(train_set, val, 3, HP._replace(
      how_many_training_steps=10_000_000))
  assert choice.steps == regularization.MAX_SEARCH_STEPS == 4000
  assert regularization.choose(train_set, val, 3, HP).steps == 600


def test_flags_that_set_it_skip_the_search_and_too_few_images_fall_back():
  train_set, val = _blobs(20), _blobs(100, seed=1)
  fixed = regularization.choose(train_set, val, 3, HP._replace(
      weight_decay=0.0))
  assert fixed.why == "set by flags" and fixed.tried == ()
  assert fixed.chosen == regularization.Setting(0.0, 0.0, HP.learning_rate)
  smoothing = regularization.choose(train_set, val, 3, HP._replace(
      weight_decay=0.0, label_smoothing=-1))
  assert [s.label_smoothing for s in smoothing.tried] == list(
      regularization.LABEL_SMOOTHINGS)
  assert {s.learning_rate for s in smoothing.tried} == {HP.learning_rate}
  both = regularization.choose(train_set, val, 3, HP._replace(
      label_smoothing=-1))
  assert len(both.tried) == len(regularization.WEIGHT_DECAYS) * 2 * 2
  few = regularization.choose(_blobs(5), _blobs(5, seed=1), 3, HP)
  assert few.why.startswith("fewer than 50 training and validation images")
  assert few.chosen == regularization.Setting(
      regularization.FALLBACK_DECAY, 0.0, HP.learning_rate)


def test_many_validation_images_or_many_classes_keep_the_search_small():
  """Above CV_BELOW_VALIDATION validation images one layer per setting is
  scored on them; many classes or features use fewer folds, then a smaller
  grid, so the layers side by side stay within MAX_WEIGHTS."""
  plan = regularization._plan  # pylint: disable=protected-access
  full = regularization.grid(HP)
  assert len(full) == 12
  assert plan(HP, 5, 1280, 100) == (full, 5)  # The dev flowers.
  assert plan(HP, 5, 1280, 5000) == (full, 0)
  assert plan(HP, 5, 2048, 100) == (full, 3)
  settings, folds = plan(HP, 100, 1024, 100)
  assert folds == 0 and len(settings) == 3
  settings, folds = plan(HP, 20, 1024, 100)
  assert folds == 3 and len(settings) == 6
  assert {s.learning_rate for s in settings} == {HP.learning_rate}
  settings, folds = plan(HP, 1000, 2048, 100)
  assert folds == 0 and [s.weight_decay for s in settings] == [0, 1e-2, 1e-1]
  for classes in (2, 5, 10, 30, 100):
    for size in (64, 1024, 2048):
      settings, folds = plan(HP, classes, size, 100)
      assert (len(settings) * max(folds, 1) * classes * size <=
              regularization.MAX_WEIGHTS or len(settings) == 3)
  train_set, val = _blobs(20), _blobs(400, seed=1)
  assert regularization.choose(train_set, val, 3, HP).scored_on == (
      "the 1200 validation images")


def test_the_classic_training_is_plain_cross_entropy_sgd():
  """--weight_decay=0: the loss SGD follows is the cross entropy alone (the
  classic tool's): one step from zero weights equals a numpy step."""
  train_set = _blobs(4)
  hparams = HParams(how_many_training_steps=1, learning_rate=0.5,
                    train_batch_size=len(train_set), weight_decay=0.0,
                    class_sampling="proportional", random_seed=3)
  tg = train.build_training_graph(train_set.x.shape[1], 3, hparams)
  rows = np.random.default_rng(3).integers(len(train_set),
                                           size=len(train_set))
  # A seeded initializer gives the same weights on a session's first run.
  with tf1.Session(graph=tg.graph) as session:
    session.run(tg.init)
    w0, b0 = train.final_layer(tg, session)
  with tf1.Session(graph=tg.graph) as session:
    train.train(tg, session, train_set, train_set, 3, hparams)
    w1, b1 = train.final_layer(tg, session)
  x, y = train_set.x[rows], train_set.y[rows]
  logits = x @ w0 + b0
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(len(y)), y] -= 1
  np.testing.assert_allclose(w1, w0 - 0.5 * x.T @ p / len(y), atol=1e-5)
  np.testing.assert_allclose(b1, b0 - 0.5 * p.mean(0), atol=1e-5)


def test_a_run_logs_and_reports_the_choice(small_models, color_images,
                                           tmp_path):
  config = helpers.run_config(tmp_path, color_images, saved_model_dir="",
                              tflite_output="", summaries_dir="")
  pipeline.run(config, HParams(how_many_training_steps=50),
               ModelOptions(graph=small_models["inception"], tfhub_module=""))
  folder = os.path.dirname(config.output_graph)
  with open(os.path.join(folder, "report.json")) as f:
    found = json.load(f)["regularization"]
  # 72 photos: chosen by cross-validation of the training and validation
  # ones; every setting tried is in the report.
  assert found["why"] == "searched", found
  assert found["scored_on"].startswith("5-fold cross-validation of the ")
  assert len(found["tried"]) == 12
  assert set(found["chosen"]) == {"weight_decay", "label_smoothing",
                                  "learning_rate"}
  assert found["chosen"] in [{k: t[k] for k in found["chosen"]}
                             for t in found["tried"]]
  with open(os.path.join(folder, "report.html")) as f:
    assert "chosen of 12 settings by cross entropy on 5-fold" in f.read()


@pytest.mark.parametrize("flag,words", [
    ("--weight_decay=-0.5", "--weight_decay=-0.5: must be 0 or more"),
    ("--label_smoothing=1", "--label_smoothing=1: must be from 0 to below 1"),
])
def test_bad_values_are_one_line_errors(tmp_path, flag, words):
  proc = helpers.run_cli([f"--image_dir={tmp_path}", flag])
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and words in lines[0], proc.stderr


def test_a_choice_is_kept_for_a_run_on_the_same_data(tmp_path):
  """With the cache folder given, a second search on the same vectors and
  settings reads the first one's result; other data searches again."""
  train_set, val = _blobs(60), _blobs(30, seed=1)
  first = regularization.choose(train_set, val, 3, HP, str(tmp_path))
  again = regularization.choose(train_set, val, 3, HP, str(tmp_path))
  assert first.why == "searched" and again.why.startswith("searched, kept")
  assert again.chosen == first.chosen and again.tried == first.tried
  assert again.cross_entropy == first.cross_entropy
  assert again.scored_on == first.scored_on
  assert "kept from a run on the same data" in again.describe()
  other = regularization.choose(_blobs(60, seed=2), val, 3, HP,
                                str(tmp_path))
  assert other.why == "searched"
  assert len(os.listdir(tmp_path / ".regularization")) == 2


def test_the_schedule_follows_the_search_unless_set():
  """auto: cosine where the search chooses the rate, constant where
  --weight_decay sets it (the classic training, one flag away); a chosen
  setting keeps the search's schedule; the flag wins over both."""
  assert schedules.of(HParams()) == "cosine"
  assert schedules.of(HParams(weight_decay=0.0)) == "constant"
  assert schedules.of(HParams(weight_decay=0.0,
                              learning_rate_schedule="cosine")) == "cosine"
  assert schedules.of(HParams(learning_rate_schedule="constant")) == (
      "constant")
  chosen = regularization.resolved(HParams(), regularization.Choice(
      regularization.Setting(1e-3, 0.0, 0.1)))
  assert (chosen.weight_decay, chosen.learning_rate,
          schedules.of(chosen)) == (1e-3, 0.1, "cosine")
  np.testing.assert_allclose(schedules.shares("cosine", 4),
                             [1.0, 0.853553, 0.5, 0.146447], atol=1e-6)
  np.testing.assert_array_equal(schedules.shares("constant", 3), [1, 1, 1])
