"""The new softmax layer: its graph, the SGD loop and evaluation.

Training data are bottleneck arrays held in memory; each step feeds one
sampled batch. Sampling (the classic tool's rule, "balanced"): pick a class
uniformly at random, then an image of that class uniformly at random, with
replacement, `train_batch_size` times. Small classes are thus seen as often as
large ones. "proportional" draws images uniformly instead, so classes are seen
in proportion to their size.
"""

import dataclasses
from typing import Callable, List, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from retrain.config import HParams

tf1 = tf.compat.v1


@dataclasses.dataclass(frozen=True)
class LabeledBottlenecks:
  """Bottlenecks of one set. x: float32 [n, D]; y: int64 [n]; paths: n files."""
  x: np.ndarray
  y: np.ndarray
  paths: Sequence[str]

  def __len__(self) -> int:
    return len(self.y)


class TrainingGraph(NamedTuple):
  """Tensors and ops of the retraining graph."""
  graph: tf.Graph
  bottleneck_input: tf.Tensor  # float32 [batch, D]
  ground_truth: tf.Tensor  # int64 [batch]
  weights: tf.Variable  # [D, classes]
  biases: tf.Variable  # [classes]
  final_tensor: tf.Tensor  # float32 [batch, classes], softmax
  cross_entropy: tf.Tensor  # scalar
  accuracy: tf.Tensor  # scalar
  train_step: tf.Operation
  summaries: tf.Tensor
  init: tf.Operation
  saver: tf1.train.Saver


class EvalPoint(NamedTuple):
  step: int
  train_accuracy: float
  cross_entropy: float
  validation_accuracy: Optional[float]


def build_training_graph(bottleneck_size: int, class_count: int,
                         hparams: HParams,
                         final_tensor_name: str = "final_result"
                         ) -> TrainingGraph:
  """One fully-connected layer + softmax on [batch, bottleneck_size] inputs."""
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(hparams.random_seed)
    with tf.name_scope("input"):
      bottleneck_input = tf1.placeholder(
          tf.float32, [None, bottleneck_size],
          name="BottleneckInputPlaceholder")
      ground_truth = tf1.placeholder(tf.int64, [None],
                                     name="GroundTruthInput")
    with tf.name_scope("final_retrain_ops"):
      weights = tf.Variable(
          tf1.truncated_normal([bottleneck_size, class_count], stddev=0.001),
          name="final_weights")
      biases = tf.Variable(tf.zeros([class_count]), name="final_biases")
      logits = tf.matmul(bottleneck_input, weights) + biases
    final_tensor = tf.nn.softmax(logits, name=final_tensor_name)
    with tf.name_scope("loss"):
      cross_entropy = tf.reduce_mean(
          tf.nn.sparse_softmax_cross_entropy_with_logits(
              labels=ground_truth, logits=logits))
    with tf.name_scope("train"):
      train_step = tf1.train.GradientDescentOptimizer(
          hparams.learning_rate).minimize(cross_entropy)
    with tf.name_scope("evaluation"):
      correct = tf.equal(tf.argmax(logits, 1), ground_truth)
      accuracy = tf.reduce_mean(tf.cast(correct, tf.float32))
    summaries = tf1.summary.merge([
        tf1.summary.scalar("cross_entropy", cross_entropy),
        tf1.summary.scalar("accuracy", accuracy),
        tf1.summary.histogram("final_weights", weights),
        tf1.summary.histogram("final_biases", biases),
    ])
    init = tf1.global_variables_initializer()
    saver = tf1.train.Saver([weights, biases])
  graph.finalize()
  return TrainingGraph(graph, bottleneck_input, ground_truth, weights, biases,
                       final_tensor, cross_entropy, accuracy, train_step,
                       summaries, init, saver)


class ProportionalSampler:
  """Draws batches of indices uniformly over all images, with replacement."""

  def __init__(self, labels: np.ndarray, class_count: int,
               rng: np.random.Generator):
    del class_count
    self._n = len(labels)
    self._rng = rng

  def sample(self, batch_size: int) -> np.ndarray:
    return self._rng.integers(self._n, size=batch_size)


class BalancedSampler:
  """Draws batches of indices: a class uniformly, then one of its images."""

  def __init__(self, labels: np.ndarray, class_count: int,
               rng: np.random.Generator):
    self._order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=class_count)
    self._present = np.flatnonzero(counts)  # Classes with training images.
    self._counts = counts[self._present]
    self._starts = (np.cumsum(counts) - counts)[self._present]
    self._rng = rng

  def sample(self, batch_size: int) -> np.ndarray:
    """int [batch_size] indices into the labels given at construction."""
    k = self._rng.integers(len(self._present), size=batch_size)
    offset = (self._rng.random(batch_size) * self._counts[k]).astype(np.int64)
    return self._order[self._starts[k] + offset]


SAMPLERS = {"balanced": BalancedSampler, "proportional": ProportionalSampler}


def sample_subset(n: int, batch_size: int,
                  rng: np.random.Generator) -> np.ndarray:
  """Indices of `batch_size` distinct items of n (all of them for -1 or >= n)."""
  if batch_size < 0 or batch_size >= n:
    return np.arange(n)
  return np.sort(rng.choice(n, size=batch_size, replace=False))


def train(tg: TrainingGraph, session: tf1.Session, train_set: LabeledBottlenecks,
          validation_set: LabeledBottlenecks, class_count: int,
          hparams: HParams,
          log: Callable[[int, str], None] = lambda step, text: None,
          train_writer: Optional[tf1.summary.FileWriter] = None,
          validation_writer: Optional[tf1.summary.FileWriter] = None,
          on_interval: Optional[Callable[[int], None]] = None,
          store_every: int = 0) -> List[EvalPoint]:
  """Runs the SGD loop; returns the evaluations made along the way.

  Every `eval_step_interval` steps (and at the last step) measures train
  accuracy and cross entropy on the step's batch and accuracy on a
  validation sample, and calls log(step, text) with them.
  `on_interval(step)` is called every `store_every` steps (if > 0).
  """
  rng = np.random.default_rng(hparams.random_seed)
  sampler = SAMPLERS[hparams.class_sampling](train_set.y, class_count, rng)
  session.run(tg.init)
  history = []
  steps = hparams.how_many_training_steps
  for step in range(1, steps + 1):
    idx = sampler.sample(hparams.train_batch_size)
    feed = {tg.bottleneck_input: train_set.x[idx],
            tg.ground_truth: train_set.y[idx]}
    is_eval = step % hparams.eval_step_interval == 0 or step == steps
    if not is_eval:
      session.run(tg.train_step, feed)
    else:
      # Metrics of the batch before this step's update, as the classic tool.
      acc, xent, summary = session.run(
          [tg.accuracy, tg.cross_entropy, tg.summaries], feed)
      session.run(tg.train_step, feed)
      val_acc = None
      if len(validation_set):
        vidx = sample_subset(len(validation_set),
                             hparams.validation_batch_size, rng)
        val_acc, val_summary = session.run(
            [tg.accuracy, tg.summaries],
            {tg.bottleneck_input: validation_set.x[vidx],
             tg.ground_truth: validation_set.y[vidx]})
        if validation_writer:
          validation_writer.add_summary(val_summary, step)
      if train_writer:
        train_writer.add_summary(summary, step)
      history.append(EvalPoint(step, float(acc), float(xent),
                               None if val_acc is None else float(val_acc)))
      val_text = ("n/a (no validation images)" if val_acc is None else
                  f"{val_acc * 100:.1f}% (N={len(vidx)})")
      log(step, f"train accuracy {acc * 100:.1f}%, cross entropy "
          f"{xent:.4f}, validation accuracy {val_text}")
    if on_interval and store_every > 0 and step % store_every == 0:
      on_interval(step)
  return history


def predict(tg: TrainingGraph, session: tf1.Session,
            x: np.ndarray) -> np.ndarray:
  """Class probabilities, float32 [n, classes], of bottlenecks x [n, D]."""
  if len(x) == 0:
    return np.zeros([0, tg.final_tensor.shape[1]], np.float32)
  return session.run(tg.final_tensor, {tg.bottleneck_input: x})


def final_layer(tg: TrainingGraph, session: tf1.Session):
  """(weights [D, classes], biases [classes]) as numpy arrays."""
  return session.run([tg.weights, tg.biases])
