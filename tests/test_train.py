"""Batch sampling, the softmax layer and the SGD loop."""

import math

import numpy as np
import pytest
import tensorflow as tf

from retrain.config import HParams
from retrain.training import train


def test_balanced_sampler_picks_classes_uniformly():
  labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
  sampler = train.BalancedSampler(labels, 4, np.random.default_rng(0))
  idx = sampler.sample(30000)
  counts = np.bincount(labels[idx], minlength=4)
  assert counts[3] == 0  # Class 3 has no images: never sampled.
  assert np.all(np.abs(counts[:3] / 30000 - 1 / 3) < 0.02)
  # Within a class, images are uniform: all 10 of class 2 appear.
  assert set(idx[labels[idx] == 2]) == set(range(990, 1000))


def test_sample_subset():
  rng = np.random.default_rng(0)
  np.testing.assert_array_equal(train.sample_subset(5, -1, rng), range(5))
  np.testing.assert_array_equal(train.sample_subset(5, 9, rng), range(5))
  sub = train.sample_subset(100, 10, rng)
  assert len(set(sub)) == 10 and sub.max() < 100


def _blobs(n, dim=8, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(0, 3, size=(classes, dim))
  y = rng.integers(classes, size=n)
  x = (centers[y] + rng.normal(size=(n, dim))).astype(np.float32)
  return train.LabeledBottlenecks(x, y.astype(np.int64), [str(i) for i in
                                                           range(n)])


def _fit(hparams, train_set, val_set):
  tg = train.build_training_graph(train_set.x.shape[1], 3, hparams)
  with tf.compat.v1.Session(graph=tg.graph) as sess:
    history = train.train(tg, sess, train_set, val_set, 3, hparams,
                          log=lambda step, text: None)
    val_x = val_set.take(np.arange(len(val_set)))
    return history, train.predict(tg, sess, val_x), train.final_layer(tg,
                                                                      sess)


def test_training_learns_separable_classes():
  hp = HParams(how_many_training_steps=300, learning_rate=0.1,
               eval_step_interval=50)
  history, probs, (w, b) = _fit(hp, _blobs(600), _blobs(200, seed=0))
  assert [h.step for h in history] == [50, 100, 150, 200, 250, 300]
  assert history[-1].validation_accuracy > 0.95
  assert history[-1].cross_entropy < history[0].cross_entropy
  assert probs.shape == (200, 3)
  np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
  assert w.shape == (8, 3) and b.shape == (3,)


def test_same_seed_same_numbers_other_seed_differs():
  hp = HParams(how_many_training_steps=50, eval_step_interval=10,
               random_seed=7)
  a = _fit(hp, _blobs(300), _blobs(60, seed=1))
  b = _fit(hp, _blobs(300), _blobs(60, seed=1))
  c = _fit(hp._replace(random_seed=8), _blobs(300), _blobs(60, seed=1))
  assert a[0] == b[0]
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[1], c[1])


def test_empty_validation_set_is_reported_not_fatal():
  empty = train.LabeledBottlenecks(np.zeros((0, 8), np.float32),
                                   np.zeros(0, np.int64), [])
  hp = HParams(how_many_training_steps=20, eval_step_interval=10)
  history, _, _ = _fit(hp, _blobs(100), empty)
  assert [h.validation_accuracy for h in history] == [None, None]


def test_proportional_sampler_follows_class_sizes():
  labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
  sampler = train.SAMPLERS["proportional"](labels, 3,
                                           np.random.default_rng(0))
  counts = np.bincount(labels[sampler.sample(50000)], minlength=3)
  np.testing.assert_allclose(counts / 50000, [0.9, 0.09, 0.01], atol=0.01)


def test_class_sampling_changes_training():
  hp = HParams(how_many_training_steps=30, eval_step_interval=10)
  a = _fit(hp, _blobs(300), _blobs(60, seed=1))
  b = _fit(hp._replace(class_sampling="proportional"), _blobs(300),
           _blobs(60, seed=1))
  assert not np.array_equal(a[1], b[1])


def _on_disk(labeled, path):
  """The same set, its vectors in a memory-mapped file in shuffled rows."""
  n, dim = labeled.x.shape
  rows = np.random.default_rng(3).permutation(n + 5)[:n]
  mm = np.memmap(path, np.float32, "w+", shape=(n + 5, dim))
  mm[rows] = labeled.x
  mm.flush()
  base = np.memmap(path, np.float32, "r", shape=(n + 5, dim))
  return train.LabeledBottlenecks(base, labeled.y, labeled.paths, rows)


def test_memory_mapped_sets_train_exactly_like_in_memory_ones(tmp_path):
  hp = HParams(how_many_training_steps=120, eval_step_interval=25,
               train_batch_size=50)
  train_set, val_set = _blobs(400), _blobs(80, seed=1)
  disk_train = _on_disk(train_set, str(tmp_path / "train.f32"))
  disk_val = _on_disk(val_set, str(tmp_path / "val.f32"))
  np.testing.assert_array_equal(disk_train.take(np.array([5, 0, 5, 399])),
                                train_set.x[[5, 0, 5, 399]])
  in_memory = _fit(hp, train_set, val_set)
  on_disk = _fit(hp, disk_train, disk_val)
  assert in_memory[0] == on_disk[0]  # Same evaluations, step by step.
  np.testing.assert_allclose(on_disk[2][0], in_memory[2][0], atol=1e-6)
  np.testing.assert_allclose(on_disk[2][1], in_memory[2][1], atol=1e-6)


def _numpy_sgd(w, b, train_set, val_set, hparams, class_count=3,
               cosine=False):
  """Reference: the same draws as train.train, plain SGD in float64, at
  the learning rate throughout or (cosine) at rate * 0.5 * (1 + cos(pi *
  (step - 1) / steps)) on step 1..steps."""
  rng = np.random.default_rng(hparams.random_seed)
  sampler = train.SAMPLERS[hparams.class_sampling](train_set.y, class_count,
                                                   rng)
  w, b = w.astype(np.float64), b.astype(np.float64)

  def probs(x, w, b):
    logits = x @ w + b
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)

  val_xent = []
  steps = hparams.how_many_training_steps
  for step in range(1, steps + 1):
    rows = sampler.sample(hparams.train_batch_size)
    x, y = train_set.x[rows].astype(np.float64), train_set.y[rows]
    delta = probs(x, w, b)
    delta[np.arange(len(y)), y] -= 1
    rate = hparams.learning_rate * (
        0.5 * (1 + math.cos(math.pi * (step - 1) / steps)) if cosine else 1)
    w = w - rate * x.T @ delta / len(y)
    b = b - rate * delta.mean(0)
    if step % hparams.eval_step_interval == 0:
      v = train.sample_subset(len(val_set), hparams.validation_batch_size, rng)
      p = probs(val_set.x[v].astype(np.float64), w, b)
      val_xent.append(-np.log(p[np.arange(len(v)), val_set.y[v]]).mean())
  return w, b, val_xent


class _Recorder:
  """Stands in for a summary writer: keeps each step's scalar values."""

  def __init__(self):
    self.scalars = {}

  def add_summary(self, summary, step):
    for value in summary.value:
      if value.WhichOneof("value") == "simple_value":
        self.scalars.setdefault(value.tag, []).append(value.simple_value)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_every_step_and_evaluation_follows_the_previous_update(monkeypatch,
                                                               schedule):
  # Each step must see the weights of the step before it, at its own rate
  # on the schedule, and each evaluation the weights just updated: compare
  # with plain SGD in numpy, over several chunks (session.runs).
  monkeypatch.setattr(train, "CHUNK_STEPS", 40)
  hp = HParams(how_many_training_steps=100, eval_step_interval=10,
               learning_rate=0.5, train_batch_size=20,
               validation_batch_size=30, learning_rate_schedule=schedule)
  train_set, val_set = _blobs(300), _blobs(60, seed=1)
  tg = train.build_training_graph(8, 3, hp)
  with tf.compat.v1.Session(graph=tg.graph) as sess:
    sess.run(tg.init)
    w0, b0 = train.final_layer(tg, sess)
  validation = _Recorder()
  with tf.compat.v1.Session(graph=tg.graph) as sess:
    train.train(tg, sess, train_set, val_set, 3, hp,
                validation_writer=validation)
    w, b = train.final_layer(tg, sess)
  ref_w, ref_b, ref_xent = _numpy_sgd(w0, b0, train_set, val_set, hp,
                                      cosine=schedule == "cosine")
  np.testing.assert_allclose(w, ref_w, atol=1e-4)
  np.testing.assert_allclose(b, ref_b, atol=1e-4)
  np.testing.assert_allclose(validation.scalars["cross_entropy"], ref_xent,
                             rtol=1e-4)
  assert not np.allclose(w, w0, atol=1e-2)  # Training moved the weights.


def test_stacked_rows_read_only_the_rows_asked_for_in_any_order(tmp_path):
  a, b = _blobs(30), _blobs(20, seed=1)
  disk_a = _on_disk(a, str(tmp_path / "a.f32"))
  stacked = train.LabeledBottlenecks.stack([disk_a, b.subset(
      np.arange(5, 20))])
  assert len(stacked) == 45 and stacked.x.shape == (45, a.x.shape[1])
  assert stacked.rows is not None  # A view: nothing read yet.
  items = np.array([44, 0, 30, 29, 31, 0])
  expected = np.concatenate([a.x, b.x[5:]])[items]
  np.testing.assert_array_equal(stacked.take(items), expected)
  np.testing.assert_array_equal(stacked.y[items],
                                np.concatenate([a.y, b.y[5:]])[items])
  assert [stacked.paths[i] for i in items] == [
      (a.paths + b.paths[5:])[i] for i in items]
  whole = stacked.in_memory()
  assert whole.rows is None and isinstance(whole.x, np.ndarray)
  np.testing.assert_array_equal(whole.x, np.concatenate([a.x, b.x[5:]]))
  view = stacked.subset(np.array([40, 2]))
  np.testing.assert_array_equal(view.take(np.array([1, 0])),
                                np.concatenate([a.x, b.x[5:]])[[2, 40]])
