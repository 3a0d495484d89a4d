"""K softmax layers trained at once, side by side in one [D, K * C] matrix.

Used where many small layers are wanted on the same cached bottlenecks:
the audit's out-of-fold predictions (one layer per fold; the
regularization search solves exact optima instead, solver.py). A step is one plain matrix product of the sampled batch, as for
one layer, only K times wider; the loss is the sum of the layers' own
losses (mean cross entropy + decay_k / 2 * |W_k|^2), so each layer's
gradient is its own loss's and the K layers are K independent SGD runs on
the same batches. The gradient is written out rather than taken by
tf.gradients: 11.4 s instead of 15.6 s for 60 layers of 5 classes on 1 280
features, 4000 steps (2 cores), which is about the matrix products' own
cost.

Each layer k has its own weight decay, label smoothing and learning rate,
and may be kept off part of the data: with `fold` [n] and `held_out` [K],
layer k learns only from the batch rows whose fold is not held_out[k]
(held_out[k] = -1: from every row); its loss is the mean cross entropy over
those rows.
"""

import dataclasses
from typing import Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from retrain.config import HParams
from retrain.training import train

tf1 = tf.compat.v1


@dataclasses.dataclass(frozen=True)
class Layers:
  """w: float32 [D, K, C]; b: float32 [K, C]."""
  w: np.ndarray
  b: np.ndarray

  def logits(self, x: np.ndarray) -> np.ndarray:
    """float32 [n, K, C] of x [n, D]."""
    d, k, c = self.w.shape
    return (np.asarray(x, np.float32) @ self.w.reshape(d, k * c)
            ).reshape(len(x), k, c) + self.b


def batches(y: np.ndarray, class_count: int, hparams: HParams, steps: int,
            rng: np.random.Generator) -> np.ndarray:
  """int32 [steps, B]: rows of y each step trains on, drawn by the run's
  sampler (--class_sampling) and batch size."""
  sampler = train.SAMPLERS[hparams.class_sampling](y, class_count, rng)
  return np.stack([sampler.sample(hparams.train_batch_size)
                   for _ in range(steps)]).astype(np.int32)


def fold_of(y: np.ndarray, folds: int, rng: np.random.Generator,
            group: Optional[np.ndarray] = None) -> np.ndarray:
  """int64 [n]: each row's cross-validation fold (0 .. folds - 1),
  every class spread evenly over them. group: int [n], rows that must share
  a fold (an image and its augmented copies); default: each row alone."""
  if group is None:
    group = np.arange(len(y))
  # One entry per group (its first row's label), folded as rows were.
  first, inverse = np.unique(group, return_index=True, return_inverse=True)[1:]
  labels = np.asarray(y)[first]
  out = np.empty(len(first), np.int64)
  start = 0
  for c in np.unique(labels):
    where = np.flatnonzero(labels == c)
    where = where[rng.permutation(len(where))]
    out[where] = (np.arange(len(where)) + start) % folds
    start += len(where)  # Folds take turns across classes too.
  return out[inverse.ravel()]


def _per_layer(value: Union[float, Sequence[float]], k: int) -> np.ndarray:
  out = np.broadcast_to(np.asarray(value, np.float32), (k,))
  return np.ascontiguousarray(out)


def train_layers(x: np.ndarray, y: np.ndarray, rows: np.ndarray,
                 class_count: int, k: int,
                 learning_rate: Union[float, Sequence[float]],
                 weight_decay: Union[float, Sequence[float]] = 0.0,
                 label_smoothing: Union[float, Sequence[float]] = 0.0,
                 seed: int = 0, fold: Optional[np.ndarray] = None,
                 held_out: Optional[Sequence[int]] = None) -> Layers:
  """K layers trained by plain SGD on x [n, D], y [n] (int), one step per
  row of `rows` [steps, B], on mean cross entropy + decay / 2 * |W_k|^2.

  learning_rate, weight_decay, label_smoothing: one value or one per layer
  ([K]). fold: int [n], held_out: int [K] (see the module docstring).
  Weights start as the new layer's do (truncated normal, stddev 0.001).
  """
  d, c = x.shape[1], class_count
  lr, decay, smooth = (_per_layer(v, k) for v in
                       (learning_rate, weight_decay, label_smoothing))
  fold = (np.zeros(len(y), np.int64) if fold is None
          else np.asarray(fold, np.int64))
  held_out = (np.full(k, -1, np.int64) if held_out is None
              else np.asarray(held_out, np.int64))
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(seed)
    data_x = tf1.placeholder(tf.float32, [None, d])
    data_y = tf1.placeholder(tf.int64, [None])
    data_fold = tf1.placeholder(tf.int64, [None])
    step_rows = tf1.placeholder(tf.int32, [None, None])
    columns = lambda v: tf.constant(np.repeat(v, c))  # [K] -> [K * C]
    decay_t, lr_t = columns(decay), columns(lr)
    smooth_t = tf.constant(smooth)[None, :, None]  # [1, K, 1]
    held_t = tf.constant(held_out)[None, :]  # [1, K]

    def body(i, w, b):
      batch = step_rows[i]
      inputs = tf.gather(data_x, batch)  # [B, D]
      logits = tf.reshape(tf.matmul(inputs, w) + b, [-1, k, c])  # [B, K, C]
      target = (tf.one_hot(tf.gather(data_y, batch), c)[:, None, :] *
                (1 - smooth_t) + smooth_t / c)  # [B, K, C]
      use = tf.cast(tf.not_equal(tf.gather(data_fold, batch)[:, None],
                                 held_t), tf.float32)  # [B, K]
      # d(mean cross entropy of layer k's rows) / d logits is
      # (softmax - target) / rows, on the rows layer k learns from.
      scale = use / tf.maximum(tf.reduce_sum(use, 0, keepdims=True), 1.0)
      grad_logits = tf.reshape((tf.nn.softmax(logits) - target) *
                               scale[:, :, None], [-1, k * c])  # [B, K * C]
      grad_w = (tf.matmul(inputs, grad_logits, transpose_a=True) +
                decay_t * w)
      grad_b = tf.reduce_sum(grad_logits, 0)
      return i + 1, w - lr_t * grad_w, b - lr_t * grad_b

    w0 = tf1.truncated_normal([d, k * c], stddev=0.001)
    b0 = tf.zeros([k * c])
    _, w, b = tf1.while_loop(lambda i, *_: i < tf.shape(step_rows)[0], body,
                             [tf.constant(0), w0, b0])
  graph.finalize()
  with tf1.Session(graph=graph) as session:
    w, b = session.run([w, b], {data_x: np.asarray(x, np.float32),
                                data_y: y, data_fold: fold,
                                step_rows: rows})
  return Layers(w.reshape(d, k, c), b.reshape(k, c))

