"""The new softmax layer: its graph, the SGD loop and evaluation.

Training data are bottleneck arrays held in memory; each step feeds one
sampled batch. Sampling (the classic tool's rule, "balanced"): pick a class
uniformly at random, then an image of that class uniformly at random, with
replacement, `train_batch_size` times. Small classes are thus seen as often as
large ones. "proportional" draws images uniformly instead, so classes are seen
in proportion to their size.
"""

import dataclasses
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from retrain.config import HParams
from retrain.features.sets import LabeledBottlenecks
from retrain.training import schedules

tf1 = tf.compat.v1


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
  # Many SGD steps and their evaluations in one session.run (run_steps),
  # on data held in the graph (loaded by load_data from the placeholders).
  train_x: tf.Tensor  # placeholder float32 [n, D]
  train_y: tf.Tensor  # placeholder int64 [n]
  validation_x: tf.Tensor  # placeholder float32 [m, D]
  validation_y: tf.Tensor  # placeholder int64 [m]
  load_data: tf.Operation
  step_indices: tf.Tensor  # placeholder int32 [steps, batch], rows of train_x
  step_rates: tf.Tensor  # placeholder float32 [steps], each step's rate
  evaluate_after: tf.Tensor  # placeholder bool [steps]: evaluate after step?
  validation_indices: tf.Tensor  # placeholder int32 [evaluations, v], rows
  # of validation_x; each an [evaluations] tensor: train_cross_entropy,
  # train_accuracy (the step's batch, before its update),
  # validation_cross_entropy, validation_accuracy (after it), histograms
  # (serialized Summary of the weights and biases); and "update", the op
  # that stores the chunk's final weights in the variables.
  run_steps: Dict[str, tf.Tensor]


class EvalPoint(NamedTuple):
  """One evaluation: train values on the step's batch (before its update),
  validation values on the validation sample (after it; None without
  validation images)."""
  step: int
  train_accuracy: float
  cross_entropy: float
  validation_accuracy: Optional[float]
  validation_cross_entropy: Optional[float] = None


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

    def metrics(x, y, w=weights, b=biases):
      """(logits, cross entropy, accuracy) of bottlenecks x, labels y."""
      logits = tf.matmul(x, w) + b
      xent = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=y, logits=logits))
      correct = tf.equal(tf.argmax(logits, 1), y)
      return logits, xent, tf.reduce_mean(tf.cast(correct, tf.float32))

    logits, cross_entropy, accuracy = metrics(bottleneck_input, ground_truth)
    final_tensor = tf.nn.softmax(logits, name=final_tensor_name)

    # The fast path: data live in the graph and a while loop runs one SGD
    # step per row of step_indices, evaluating where evaluate_after says, so
    # a whole chunk of training costs one session.run.
    with tf.name_scope("train_data"):
      def data_variable(dtype, shape, name):
        value = tf1.placeholder(dtype, shape, name)
        return value, tf1.Variable(value, trainable=False,
                                   validate_shape=False, collections=[],
                                   name="data_" + name)
      train_x, data_x = data_variable(tf.float32, [None, bottleneck_size], "x")
      train_y, data_y = data_variable(tf.int64, [None], "y")
      validation_x, data_vx = data_variable(
          tf.float32, [None, bottleneck_size], "validation_x")
      validation_y, data_vy = data_variable(tf.int64, [None], "validation_y")
      load_data = tf.group(*[v.initializer for v in (data_x, data_y, data_vx,
                                                     data_vy)])
      step_indices = tf1.placeholder(tf.int32, [None, None], "step_indices")
      step_rates = tf1.placeholder(tf.float32, [None], "step_rates")
      evaluate_after = tf1.placeholder(tf.bool, [None], "evaluate_after")
      validation_indices = tf1.placeholder(tf.int32, [None, None],
                                           "validation_indices")
    evaluations = tf.shape(validation_indices)[0]
    names = ("train_cross_entropy", "train_accuracy",
             "validation_cross_entropy", "validation_accuracy")

    loss_of = training_loss(class_count, max(hparams.label_smoothing, 0.0),
                            max(hparams.weight_decay, 0.0))

    # The weights travel through the loop as values, never as variables:
    # step i+1 reads what step i computed, by data dependence, so steps are
    # ordered and runs repeat exactly (a variable updated inside the loop may
    # be read by the next iteration before the update lands). Plain SGD:
    # w <- w - rate * dloss/dw, the rate being the step's (step_rates: the
    # learning rate on its schedule), the loss the cross entropy (with
    # label smoothing and weight decay if set: training_loss).
    def body(i, k, w, b, arrays):
      rows = step_indices[i]
      labels = tf.gather(data_y, rows)
      logits, xent, acc = metrics(tf.gather(data_x, rows), labels, w, b)
      grad_w, grad_b = tf.gradients(loss_of(logits, labels, xent, w), [w, b])
      new_w = w - step_rates[i] * grad_w
      new_b = b - step_rates[i] * grad_b

      def evaluate():
        vrows = validation_indices[k]
        _, vxent, vacc = metrics(tf.gather(data_vx, vrows),
                                 tf.gather(data_vy, vrows), new_w, new_b)
        histograms = tf1.summary.merge([
            tf1.summary.histogram("final_weights", new_w),
            tf1.summary.histogram("final_biases", new_b)])
        values = (xent, acc, vxent, vacc, histograms)
        return k + 1, tuple(a.write(k, v) for a, v in zip(arrays, values))

      k, arrays = tf.cond(evaluate_after[i], evaluate,
                          lambda: (tf.identity(k), arrays))
      return i + 1, k, new_w, new_b, arrays

    arrays = tuple(tf.TensorArray(dtype, size=evaluations)
                   for dtype in [tf.float32] * 4 + [tf.string])
    _, _, last_w, last_b, arrays = tf1.while_loop(
        lambda i, *_: i < tf.shape(step_indices)[0], body,
        [tf.constant(0), tf.constant(0), weights.read_value(),
         biases.read_value(), arrays],
        name="train_steps")
    run_steps = {name: a.stack() for name, a in zip(
        names + ("histograms",), arrays)}
    run_steps["update"] = tf.group(weights.assign(last_w),
                                   biases.assign(last_b))
    init = tf1.global_variables_initializer()
    saver = tf1.train.Saver([weights, biases])
  graph.finalize()
  return TrainingGraph(graph, bottleneck_input, ground_truth, weights, biases,
                       final_tensor, cross_entropy, accuracy, init, saver,
                       train_x, train_y, validation_x, validation_y,
                       load_data, step_indices, step_rates, evaluate_after,
                       validation_indices, run_steps)


def training_loss(class_count: int, label_smoothing: float,
                  weight_decay: float):
  """The loss SGD minimises, as loss(logits [B, C], labels [B], their mean
  cross entropy, weights [D, C]) -> scalar: the cross entropy against
  labels smoothed to (1 - s) on the class and s / C on every class (Keras'
  rule), plus weight_decay / 2 * |weights|^2 (biases are not decayed).
  With both 0 it is the cross entropy itself, as in the classic tool."""
  def loss(logits, labels, xent, w):
    if label_smoothing > 0:
      target = (tf.one_hot(labels, class_count) * (1 - label_smoothing) +
                label_smoothing / class_count)
      xent = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
          labels=target, logits=logits))
    if weight_decay > 0:
      xent += 0.5 * weight_decay * tf.reduce_sum(tf.square(w))
    return xent
  return loss


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
  # A set kept on disk (rows given) is read a chunk at a time: only the
  # items the chunk samples enter the graph. Others are loaded once.
  streaming = train_set.rows is not None or validation_set.rows is not None
  if not streaming:
    _load(tg, session, train_set, validation_set)
  history = []
  steps = hparams.how_many_training_steps
  rates = hparams.learning_rate * schedules.shares(
      schedules.of(hparams), steps)
  every = hparams.eval_step_interval
  done = 0
  while done < steps:
    end = _chunk_end(done, steps, store_every if on_interval else 0)
    # Same random draws, in the same order, however steps are chunked.
    step_rows, val_rows, eval_steps = [], [], []
    for step in range(done + 1, end + 1):
      step_rows.append(sampler.sample(hparams.train_batch_size))
      if step % every == 0 or step == steps:
        eval_steps.append(step)
        val_rows.append(sample_subset(len(validation_set),
                                      hparams.validation_batch_size, rng))
    step_rows = np.stack(step_rows)
    val_rows = (np.stack(val_rows) if val_rows
                else np.zeros((0, 0), np.int64))
    if streaming:
      step_rows, val_rows = _load_rows(tg, session, train_set, step_rows,
                                       validation_set, val_rows)
    out = session.run(tg.run_steps, {
        tg.step_indices: step_rows.astype(np.int32),
        tg.step_rates: rates[done:end],
        tg.evaluate_after: np.isin(np.arange(done + 1, end + 1), eval_steps),
        tg.validation_indices: val_rows.astype(np.int32)})
    for k, step in enumerate(eval_steps):
      xent = float(out["train_cross_entropy"][k])
      acc = float(out["train_accuracy"][k])
      val_acc = val_xent = None
      if train_writer:
        train_writer.add_summary(scalar_summary(xent, acc), step)
        train_writer.add_summary(out["histograms"][k], step)
      if len(validation_set):
        val_acc = float(out["validation_accuracy"][k])
        val_xent = float(out["validation_cross_entropy"][k])
        if validation_writer:
          validation_writer.add_summary(scalar_summary(val_xent, val_acc),
                                        step)
      history.append(EvalPoint(step, acc, xent, val_acc, val_xent))
      val_text = ("n/a (no validation images)" if val_acc is None else
                  f"{val_acc * 100:.1f}% (N={val_rows.shape[1]})")
      log(step, f"train accuracy {acc * 100:.1f}%, cross entropy "
          f"{xent:.4f}, validation accuracy {val_text}")
    done = end
    if on_interval and store_every > 0 and done % store_every == 0:
      on_interval(done)
  return history


# Steps per session.run (fewer where intermediate graphs are stored).
CHUNK_STEPS = 500


def _chunk_end(done: int, steps: int, store_every: int) -> int:
  """The last step of the chunk that starts after step `done`."""
  end = min(steps, done + CHUNK_STEPS)
  if store_every > 0:
    end = min(end, (done // store_every + 1) * store_every)
  return end


def _load(tg: TrainingGraph, session: tf1.Session,
          train_set: LabeledBottlenecks, validation_set: LabeledBottlenecks,
          train_items: Optional[np.ndarray] = None,
          validation_items: Optional[np.ndarray] = None) -> None:
  """Loads the sets (or the given items of them) into the graph."""
  def part(labeled, items):
    if items is None:
      return labeled.in_memory().x, labeled.y
    return labeled.take(items), labeled.y[items]
  x, y = part(train_set, train_items)
  vx, vy = part(validation_set, validation_items)
  session.run(tg.load_data, {tg.train_x: x, tg.train_y: y,
                             tg.validation_x: vx, tg.validation_y: vy})


def _load_rows(tg: TrainingGraph, session: tf1.Session,
               train_set: LabeledBottlenecks, step_rows: np.ndarray,
               validation_set: LabeledBottlenecks, val_rows: np.ndarray
               ) -> Tuple[np.ndarray, np.ndarray]:
  """Loads only the sampled items; returns the indices renumbered to them."""
  items, local = np.unique(step_rows, return_inverse=True)
  val_items, val_local = np.unique(val_rows, return_inverse=True)
  _load(tg, session, train_set, validation_set, items, val_items)
  return local.reshape(step_rows.shape), val_local.reshape(val_rows.shape)


def predict(tg: TrainingGraph, session: tf1.Session,
            x: np.ndarray) -> np.ndarray:
  """Class probabilities, float32 [n, classes], of bottlenecks x [n, D]."""
  if len(x) == 0:
    return np.zeros([0, tg.final_tensor.shape[1]], np.float32)
  return session.run(tg.final_tensor, {tg.bottleneck_input: x})


def final_layer(tg: TrainingGraph, session: tf1.Session):
  """(weights [D, classes], biases [classes]) as numpy arrays."""
  return session.run([tg.weights, tg.biases])
