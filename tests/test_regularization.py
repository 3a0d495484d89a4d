"""The new layer's weight decay and learning rate (and label smoothing),
chosen on held-out cross entropy when the flags leave them at -1
(training/regularization.py, training/solver.py), and the side-by-side
fold layers of the audit (training/side_by_side.py)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from retrain import pipeline
from retrain.config import HParams, ModelOptions
from retrain.audit import findings as audit_findings
from retrain.features import bottlenecks
from retrain.features.sets import LabeledBottlenecks
from retrain.reports import phases
from retrain.training import (regularization, schedules, side_by_side,
                              solver, train)
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


def test_the_solver_reaches_the_optimum_scikit_learn_finds():
  """solver.fit minimizes mean cross entropy + decay / 2 |W|^2: the same
  problem as LogisticRegression(C = 1 / (decay n)), on non-negative,
  uncentred features like a CNN's; warm starts end at the same optimum."""
  from sklearn.linear_model import LogisticRegression
  data = _blobs(60, d=32)
  x = np.abs(data.x) + 1.0
  for decay in (1e-1, 1e-2, 1e-3):
    ours = solver.fit(x, data.y, 3, decay)
    theirs = LogisticRegression(C=1 / (decay * len(x)), tol=1e-10,
                                max_iter=10_000).fit(x, data.y)
    assert ours.gradient <= solver.TOLERANCE
    # Our objective at scikit-learn's solution is no lower than at ours.
    at_theirs = solver.fit(x, data.y, 3, decay, start=solver.Solution(
        theirs.coef_.T, theirs.intercept_, 0, 0, 0), max_iterations=0)
    assert ours.loss <= at_theirs.loss + 1e-7, decay
    mine = np.exp(solver.log_softmax(x @ ours.w + ours.b))
    np.testing.assert_allclose(mine, theirs.predict_proba(x), atol=5e-3)
    warm = solver.fit(x, data.y, 3, decay, start=solver.fit(x, data.y, 3,
                                                            decay * 3))
    np.testing.assert_allclose(warm.w, ours.w, atol=2e-3)
    assert warm.evaluations <= ours.evaluations


def test_the_curvature_is_the_hessians_largest_eigenvalue():
  data = _blobs(30, d=6)
  at = solver.fit(data.x, data.y, 3, 0.01)
  found = solver.top_curvature(data.x, at, 0.01, iterations=200)
  # The Hessian by finite differences of the gradient, in (W, b).
  d, c = 6, 3
  theta = np.concatenate([at.w.ravel(), at.b]).astype(np.float64)
  t = solver.targets(data.y, c)
  # In the parameters SGD steps in (the solver centres x inside fit only).
  grad = lambda th: solver._objective(data.x, t, 0.01, th, d, c)[1]  # pylint: disable=protected-access
  eps = 1e-3
  hessian = np.stack([(grad(theta + eps * e) - grad(theta - eps * e)) /
                      (2 * eps) for e in np.eye(len(theta))])
  exact = np.linalg.eigvalsh((hessian + hessian.T) / 2).max()
  assert abs(found - exact) / exact < 0.05, (found, exact)


def test_the_final_sgd_layer_ends_at_the_optimum_the_search_scored():
  """The search scores each setting by its exact optimum; trained by SGD
  with the chosen setting (its rate the largest stable one, the cosine
  schedule), the final layer ends there: same held-out cross entropy,
  nearly the same weights. The classic rate stops short."""
  train_set, val = _blobs(60), _blobs(100, seed=1)
  hp = HP._replace(how_many_training_steps=4000, learning_rate=0.01)
  choice = regularization.choose(train_set, val, 3, hp)
  assert choice.chosen.learning_rate == 0.1, choice.describe()
  optimum = solver.fit(train_set.x, train_set.y, 3,
                       choice.chosen.weight_decay)
  w, b = _trained(train_set, val, regularization.resolved(hp, choice))
  ce = lambda w, b: _cross_entropy(val.x, val.y, w, b)
  assert abs(ce(w, b) - ce(optimum.w, optimum.b)) < 0.01
  assert (np.linalg.norm(w - optimum.w) / np.linalg.norm(optimum.w)) < 0.1
  slow = _trained(train_set, val, regularization.resolved(hp, choice)._replace(
      learning_rate=0.01))
  assert (np.linalg.norm(slow[0] - optimum.w) >
          1.5 * np.linalg.norm(w - optimum.w))


def test_cross_validation_scores_each_image_by_layers_that_never_saw_it():
  """On labels that are pure noise, a layer fits its training rows, but
  the cross-validated accuracy stays at chance; on real classes it is near
  what a layer trained apart scores on new points."""
  noise = _blobs(40, d=256)
  shuffled = np.random.default_rng(5).permutation(noise.y)
  settings = [regularization.Setting(1e-4, 0.0, 0.5)]
  fold = side_by_side.fold_of(shuffled, 5, np.random.default_rng(0))
  _, fitted = regularization.held_out(noise.x, shuffled, noise.x, shuffled,
                                      3, settings)
  _, crossed = regularization.cross_validate(noise.x, shuffled, 3, settings,
                                             fold)
  assert fitted[0] > 0.9 and crossed[0] < 0.5, (fitted, crossed)
  real, test = _blobs(40), _blobs(300, seed=2)
  fold = side_by_side.fold_of(real.y, 5, np.random.default_rng(0))
  _, crossed = regularization.cross_validate(real.x, real.y, 3, settings,
                                             fold)
  _, apart = regularization.held_out(real.x, real.y, test.x, test.y, 3,
                                     settings)
  assert abs(crossed[0] - apart[0]) < 0.1, (crossed, apart)


def _with_copies(data, copies, noise=0.05, seed=3):
  """data and `copies` augmented copies of each row (the row plus a little
  noise, as flips move a CNN's vector), named as the pipeline names them."""
  rng = np.random.default_rng(seed)
  xs, ys, paths = [data.x], [data.y], list(data.paths)
  for k in range(1, copies + 1):
    xs.append(data.x + rng.normal(0, noise, data.x.shape).astype(np.float32))
    ys.append(data.y)
    paths += [f"{p}{bottlenecks.AUGMENTED_MARK}{k}" for p in data.paths]
  return LabeledBottlenecks(np.concatenate(xs), np.concatenate(ys), paths)


def test_an_image_and_its_copies_share_a_fold_and_only_originals_score():
  """With augmentation copies, a fold per row scores layers on copies of
  images they learnt from (on noise labels: far above chance, and the
  weakest decay looks best); folds by image keep the score at chance, and
  the search says how many originals it scored."""
  noise = _blobs(40, d=256)
  noise = LabeledBottlenecks(noise.x, np.random.default_rng(5).permutation(
      noise.y), noise.paths)
  augmented = _with_copies(noise, 2)
  group, original = regularization.groups_of(augmented.paths)
  assert original.sum() == 120 and len(np.unique(group)) == 120
  settings = [regularization.Setting(d, 0.0, 0.5) for d in (1e-4, 1e-1)]
  by_row = side_by_side.fold_of(augmented.y, 5, np.random.default_rng(0))
  by_image = side_by_side.fold_of(augmented.y, 5, np.random.default_rng(0),
                                  group)
  for g in range(120):  # Each image's rows in one fold.
    assert len(set(by_image[group == g])) == 1
  for c in range(3):  # Still stratified, by image.
    assert sorted(np.bincount(by_image[original & (augmented.y == c)])) == [
        8] * 5
  leaky_xent, leaky = regularization.cross_validate(
      augmented.x, augmented.y, 3, settings, by_row, original)
  xent, fair = regularization.cross_validate(
      augmented.x, augmented.y, 3, settings, by_image, original)
  assert leaky[0] > 0.8 and leaky_xent[0] < leaky_xent[1]
  assert fair.max() < 0.5 and xent[1] < xent[0]
  choice = regularization.choose(
      _with_copies(_blobs(40), 1), _blobs(10, seed=1), 3, HP)
  assert choice.scored_on == (
      "5-fold cross-validation of the 150 training and validation images "
      "(and 120 augmented copies, which only train, each in its image's "
      "fold)")


def test_the_audits_fold_layers_read_original_images_only():
  """The audit's out-of-fold layers (audit/labels.py) get the originals of
  every set, never an augmented copy (findings.originals)."""
  sets = {"training": _with_copies(_blobs(10), 2),
          "validation": _blobs(3, seed=1), "testing": _blobs(3, seed=2)}
  vectors, names = audit_findings.originals(sets, bottlenecks.AUGMENTED_MARK)
  assert len(vectors) == 30 + 9 + 9 == len(names)
  assert not any(bottlenecks.AUGMENTED_MARK in p for p in vectors.paths)
  np.testing.assert_array_equal(vectors.take(np.arange(30)),
                                sets["training"].x[:30])


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


def test_the_rate_is_the_largest_stable_at_the_chosen_optimum():
  """The rate is 10 x --learning_rate where rate x curvature stays within
  MAX_RATE_X_CURVATURE, else --learning_rate (features 30 times larger
  curve the loss 900 times more)."""
  train_set, val = _blobs(100), _blobs(100, seed=1)
  slow = HP._replace(learning_rate=0.001)
  choice = regularization.choose(train_set, val, 3, slow)
  assert choice.chosen.learning_rate == 0.01, choice.describe()
  assert regularization.resolved(slow, choice).learning_rate == 0.01
  assert 0 < choice.curvature * 0.01 <= regularization.MAX_RATE_X_CURVATURE
  big = LabeledBottlenecks(train_set.x * 30, train_set.y, train_set.paths)
  steep = regularization.choose(big, LabeledBottlenecks(
      val.x * 30, val.y, val.paths), 3, slow)
  assert steep.chosen.learning_rate == 0.001, steep.describe()
  assert steep.curvature * 0.01 > regularization.MAX_RATE_X_CURVATURE


def test_the_search_picks_the_lowest_held_out_cross_entropy():
  train_set, val = _blobs(20), _blobs(100, seed=1)
  choice = regularization.choose(train_set, val, 3, HP)
  assert choice.why == "searched"
  assert [s.weight_decay for s in choice.tried] == list(
      regularization.WEIGHT_DECAYS)
  assert choice.scored_on == ("5-fold cross-validation of the 360 training "
                              "and validation images")
  best = int(np.argmin(choice.cross_entropy))
  assert choice.chosen == choice.tried[best]
  assert choice.chosen.weight_decay > regularization.WEIGHT_DECAYS[0]
  # The layer trained with the choice beats the classic one on held-out
  # points of the same classes.
  test = _blobs(300, seed=2)
  chosen = _trained(train_set, val, regularization.resolved(HP, choice))
  classic = _trained(train_set, val, HP._replace(weight_decay=0.0))
  assert (_cross_entropy(test.x, test.y, *chosen) <
          _cross_entropy(test.x, test.y, *classic))
  assert np.linalg.norm(chosen[0]) < np.linalg.norm(classic[0])
  text = choice.describe()
  assert "chosen of 6 settings by cross entropy on 5-fold" in text
  assert f"weight decay {choice.chosen.weight_decay:g}" in text


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
  assert len(both.tried) == len(regularization.WEIGHT_DECAYS) * 2
  few = regularization.choose(_blobs(5), _blobs(5, seed=1), 3, HP)
  assert few.why.startswith("fewer than 50 training and validation images")
  assert few.chosen == regularization.Setting(
      regularization.FALLBACK_DECAY, 0.0, HP.learning_rate)


def test_many_validation_images_or_many_rows_keep_the_search_small():
  """Above CV_BELOW_VALIDATION validation images the settings are scored
  on them; many rows x features x classes take fewer folds."""
  folds = regularization._folds  # pylint: disable=protected-access
  assert folds(500, 1280, 5, 50) == 5  # The dev flowers.
  assert folds(500, 1280, 5, 5000) == 0
  assert folds(2000, 2048, 5, 200) == regularization.FEW_FOLDS == 3
  train_set, val = _blobs(20), _blobs(400, seed=1)
  assert regularization.choose(train_set, val, 3, HP).scored_on == (
      "the 1200 validation images")
  # Many classes and features: fewer rows (a random sample of each set).
  rows = regularization.search_rows
  assert rows(1280, 5) == regularization.MAX_SEARCH_ROWS
  assert rows(2048, 100) == 9765 and rows(2048, 1000) == 2000


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
    written = json.load(f)
  found = written["regularization"]
  # Where the time went (the search its own phase); the audit is off in
  # library runs of the tests, fine-tuning was not asked for.
  assert list(written["phases"]) == ["model load", "extraction", "search",
                                     "training", "export"]
  assert all(s > 0 for s in written["phases"].values())
  # 72 photos: chosen by cross-validation of the training and validation
  # ones; every setting tried is in the report.
  assert found["why"] == "searched", found
  assert found["scored_on"].startswith("5-fold cross-validation of the ")
  assert len(found["tried"]) == len(regularization.WEIGHT_DECAYS)
  assert set(found["chosen"]) == {"weight_decay", "label_smoothing",
                                  "learning_rate"}
  assert found["chosen"] in [{k: t[k] for k in found["chosen"]}
                             for t in found["tried"]]
  with open(os.path.join(folder, "report.html")) as f:
    assert "chosen of 6 settings by cross entropy on 5-fold" in f.read()


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


def test_phases_are_one_log_line_that_reads_back():
  clock = phases.Phases()
  assert clock.timed("search", lambda a, b=0: a + b, 1, b=2) == 3
  assert 0 <= clock.seconds["search"] < 1
  clock.add("search", 0.01)
  clock.add("training", 1.25)
  clock.add("training", 0.5)
  clock.add("fine-tuning", 1e-5)  # Did nothing: left out.
  line = clock.describe()
  assert line.startswith("Phases: search 0.01 s, training 1.75 s")
  assert "fine-tuning" not in line
  assert phases.parse("I1205 pipeline.py:159] " + line) == {
      "search": 0.01, "training": 1.75}


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
