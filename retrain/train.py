"""The new softmax layer: its graph, the SGD loop and evaluation.

Training data are bottleneck arrays held in memory; each step feeds one
sampled batch. Sampling (the classic tool's rule, "balanced"): pick a class
uniformly at random, then an image of that class uniformly at random, with
replacement, `train_batch_size` times. Small classes are thus seen as often as
large ones. "proportional" draws images uniformly instead, so classes are seen
in proportion to their size.
"""

import dataclasses
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from retrain.config import HParams

tf1 = tf.compat.v1


@dataclasses.dataclass(frozen=True)
class LabeledBottlenecks:
  """Bottlenecks of one set: y: int64 [n]; paths: n files.

  Item i's vector is x[i], or x[rows[i]] when `rows` is given (x is then a
  larger, usually memory-mapped, array that is read only where needed).
  """
  x: np.ndarray
  y: np.ndarray
  paths: Sequence[str]
  rows: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return len(self.y)

  def take(self, indices: np.ndarray) -> np.ndarray:
    """float32 [len(indices), D]: the vectors of the given items."""
    if self.rows is None:
      return self.x[indices]
    rows = self.rows[indices]
    order = np.argsort(rows, kind="stable")  # Read the file front to back.
    out = np.empty((len(rows), self.x.shape[1]), np.float32)
    out[order] = self.x[rows[order]]
    return out


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
  init: tf.Operation
  saver: tf1.train.Saver
  # Many SGD steps in one session.run, on training data held in the graph:
  train_x: tf.Tensor  # placeholder float32 [n, D], fed to load_data
  train_y: tf.Tensor  # placeholder int64 [n]
  load_data: tf.Operation
  step_indices: tf.Tensor  # placeholder int32 [steps, batch]
  run_steps: Tuple[tf.Tensor, tf.Tensor]  # last batch's (xent, accuracy)
  # Measured after run_steps' updates, in the same session.run: (xent,
  # accuracy) of bottleneck_input/ground_truth, and weight/bias histograms.
  evaluate_after_steps: Tuple[tf.Tensor, tf.Tensor]
  histograms_after_steps: tf.Tensor  # serialized Summary


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
    optimizer = tf1.train.GradientDescentOptimizer(hparams.learning_rate)

    def metrics(x, y):
      """(logits, cross entropy, accuracy) of bottlenecks x, labels y."""
      logits = tf.matmul(x, weights) + biases
      xent = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=y, logits=logits))
      correct = tf.equal(tf.argmax(logits, 1), y)
      return logits, xent, tf.reduce_mean(tf.cast(correct, tf.float32))

    logits, cross_entropy, accuracy = metrics(bottleneck_input, ground_truth)
    final_tensor = tf.nn.softmax(logits, name=final_tensor_name)

    # The fast path: training data live in the graph and a while loop runs
    # one SGD step per row of step_indices, so a whole evaluation interval
    # costs one session.run. Each step's metrics are measured on its batch
    # before its update; the loop returns the last step's.
    with tf.name_scope("train_data"):
      train_x = tf1.placeholder(tf.float32, [None, bottleneck_size], "x")
      train_y = tf1.placeholder(tf.int64, [None], "y")
      data_x = tf1.Variable(train_x, trainable=False, validate_shape=False,
                            collections=[], name="data_x")
      data_y = tf1.Variable(train_y, trainable=False, validate_shape=False,
                            collections=[], name="data_y")
      load_data = tf.group(data_x.initializer, data_y.initializer)
      step_indices = tf1.placeholder(tf.int32, [None, None], "step_indices")

    def body(i, unused_xent, unused_acc):
      rows = step_indices[i]
      _, xent, acc = metrics(tf.gather(data_x, rows), tf.gather(data_y, rows))
      with tf.control_dependencies([xent, acc]):
        update = optimizer.minimize(xent)
      with tf.control_dependencies([update]):
        return i + 1, tf.identity(xent), tf.identity(acc)

    _, last_xent, last_acc = tf1.while_loop(
        lambda i, *_: i < tf.shape(step_indices)[0], body,
        [tf.constant(0), tf.constant(0.0), tf.constant(0.0)],
        name="train_steps")
    # Evaluation and histograms in the same session.run, after the steps.
    with tf.control_dependencies([last_xent, last_acc]):
      _, eval_xent, eval_acc = metrics(bottleneck_input, ground_truth)
      histograms = tf1.summary.merge([
          tf1.summary.histogram("final_weights", tf.identity(weights)),
          tf1.summary.histogram("final_biases", tf.identity(biases)),
      ])
    init = tf1.global_variables_initializer()
    saver = tf1.train.Saver([weights, biases])
  graph.finalize()
  return TrainingGraph(graph, bottleneck_input, ground_truth, weights, biases,
                       final_tensor, cross_entropy, accuracy, init, saver,
                       train_x, train_y, load_data, step_indices,
                       (last_xent, last_acc), (eval_xent, eval_acc),
                       histograms)


def scalar_summary(cross_entropy: float, accuracy: float) -> tf1.Summary:
  """The TensorBoard scalars of one evaluation (same tags for train and
  validation writers, so TensorBoard draws them on one chart)."""
  return tf1.Summary(value=[
      tf1.Summary.Value(tag="cross_entropy", simple_value=cross_entropy),
      tf1.Summary.Value(tag="accuracy", simple_value=accuracy)])


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
  # A training set kept on disk (rows given) is read a few batches at a
  # time: only the items each evaluation interval samples enter the graph.
  streaming = train_set.rows is not None
  if not streaming:
    session.run(tg.load_data, {tg.train_x: train_set.x,
                               tg.train_y: train_set.y})
  history = []
  steps = hparams.how_many_training_steps
  interval = hparams.eval_step_interval
  if on_interval and store_every > 0:
    interval = int(np.gcd(interval, store_every))
  done = 0
  while done < steps:
    chunk = min(interval - done % interval, steps - done)
    indices = np.stack([sampler.sample(hparams.train_batch_size)
                        for _ in range(chunk)]).astype(np.int32)
    if streaming:
      rows, local = np.unique(indices, return_inverse=True)
      session.run(tg.load_data, {tg.train_x: train_set.take(rows),
                                 tg.train_y: train_set.y[rows]})
      indices = local.reshape(indices.shape).astype(np.int32)
    done += chunk
    is_eval = done % hparams.eval_step_interval == 0 or done == steps
    feed = {tg.step_indices: indices}
    fetches = {"train": tg.run_steps}
    if is_eval and len(validation_set):
      vidx = sample_subset(len(validation_set), hparams.validation_batch_size,
                           rng)
      feed[tg.bottleneck_input] = validation_set.take(vidx)
      feed[tg.ground_truth] = validation_set.y[vidx]
      fetches["validation"] = tg.evaluate_after_steps
    if is_eval and train_writer:
      fetches["histograms"] = tg.histograms_after_steps
    out = session.run(fetches, feed)
    xent, acc = (float(v) for v in out["train"])
    if is_eval:
      val_acc = None
      if train_writer:
        train_writer.add_summary(scalar_summary(xent, acc), done)
        train_writer.add_summary(out["histograms"], done)
      if "validation" in out:
        val_xent, val_acc = (float(v) for v in out["validation"])
        if validation_writer:
          validation_writer.add_summary(scalar_summary(val_xent, val_acc),
                                        done)
      history.append(EvalPoint(done, acc, xent, val_acc))
      val_text = ("n/a (no validation images)" if val_acc is None else
                  f"{val_acc * 100:.1f}% (N={len(vidx)})")
      log(done, f"train accuracy {acc * 100:.1f}%, cross entropy "
          f"{xent:.4f}, validation accuracy {val_text}")
    if on_interval and store_every > 0 and done % store_every == 0:
      on_interval(done)
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
