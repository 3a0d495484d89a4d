"""The new layer's regularization, chosen on validation cross entropy.

Where --weight_decay (by default) or --label_smoothing is -1, a small grid of
settings is tried: one softmax layer per setting, all trained side by side in
one [D, K * C] matrix on the same sampled batches, with the run's own steps
(up to MAX_SEARCH_STEPS), batch size and learning rate: about the cost of one
more training. The setting whose layer has the lowest cross entropy on the
whole validation set wins; ties go to the weaker regularization. The real
training then runs with it (train.py).
"""

import dataclasses
import itertools
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from cache import memo
from retrain.config import HParams
from retrain.features.sets import LabeledBottlenecks
from retrain.training import train

tf1 = tf.compat.v1

# The grid (for a flag left at -1). Weight decay is per example (the loss
# is the batch's mean cross entropy + wd / 2 * |W|^2).
WEIGHT_DECAYS = (0.0, 3e-3, 1e-2, 3e-2, 1e-1)
# Only with --label_smoothing=-1: validation cross entropy, which picks the
# setting, rarely favours smoothing (it spends confidence on purpose).
LABEL_SMOOTHINGS = (0.0, 0.1)

# The search trains on at most this many training rows (a random subset of
# larger sets, read from the memory-mapped index), for at most this many
# steps (a longer run's layers keep the setting chosen at this length).
MAX_SEARCH_ROWS = 100_000
MAX_SEARCH_STEPS = 4000

# Fewer validation images than this: no search (its choice would be noise);
# the defaults below are used.
MIN_VALIDATION = 20
FALLBACK = (1e-2, 0.0)


# Raised when the search changes; part of the kept choices' key.
VERSION = 1
MEMO_KIND = "regularization"


class Setting(NamedTuple):
  weight_decay: float
  label_smoothing: float


@dataclasses.dataclass(frozen=True)
class Choice:
  """What was tried, what it scored on validation, what was chosen."""
  chosen: Setting
  tried: Tuple[Setting, ...] = ()
  validation_cross_entropy: Tuple[float, ...] = ()
  validation_accuracy: Tuple[float, ...] = ()
  why: str = "searched"  # Or "set by flags", "too few validation images".
  seconds: float = 0.0
  steps: int = 0  # Steps each candidate was trained for.

  def describe(self) -> str:
    """One log line."""
    chosen = (f"weight decay {self.chosen.weight_decay:g}, label smoothing "
              f"{self.chosen.label_smoothing:g}")
    if not self.why.startswith("searched"):
      return f"Regularization: {chosen} ({self.why})"
    best = self.tried.index(self.chosen)
    plain = (self.tried.index(Setting(0.0, 0.0))
             if Setting(0.0, 0.0) in self.tried else None)
    versus = ("" if plain is None or plain == best else
              f"; none: {self.validation_cross_entropy[plain]:.4f}, "
              f"{100 * self.validation_accuracy[plain]:.1f}%")
    return (f"Regularization: {chosen}, chosen of {len(self.tried)} settings "
            f"by validation cross entropy ({self.validation_cross_entropy[best]:.4f}, "
            f"accuracy {100 * self.validation_accuracy[best]:.1f}%{versus}) "
            + (f"in {self.seconds:.1f} s" if self.why == "searched" else
               "(kept from a run on the same data)") +
            "; --weight_decay sets it (0: the classic training)")

  def to_json(self) -> dict:
    return dict(chosen=self.chosen._asdict(), why=self.why, steps=self.steps,
                tried=[dict(s._asdict(), validation_cross_entropy=x,
                            validation_accuracy=a)
                       for s, x, a in zip(self.tried,
                                          self.validation_cross_entropy,
                                          self.validation_accuracy)])


def grid(hparams: HParams) -> List[Setting]:
  """The settings to try: the grid for each flag left at -1, else its
  value."""
  decays = (WEIGHT_DECAYS if hparams.weight_decay < 0
            else (hparams.weight_decay,))
  smoothings = (LABEL_SMOOTHINGS if hparams.label_smoothing < 0
                else (hparams.label_smoothing,))
  return [Setting(w, s) for w, s in itertools.product(decays, smoothings)]


def choose(train_set: LabeledBottlenecks, validation_set: LabeledBottlenecks,
           class_count: int, hparams: HParams, memo_root: str = "") -> Choice:
  """The regularization for the run: the flags' values where set, the rest
  chosen on validation cross entropy (see the module docstring). With
  memo_root (the cache folder), a choice made before on the same vectors
  and settings is read from there (cache/memo.py), a new one kept."""
  import time  # pylint: disable=g-import-not-at-top
  settings = grid(hparams)
  if len(settings) == 1:
    return Choice(settings[0], why="set by flags")
  if len(validation_set) < MIN_VALIDATION or not len(train_set):
    fallback = Setting(*(v if v >= 0 else f for v, f in zip(
        (hparams.weight_decay, hparams.label_smoothing), FALLBACK)))
    return Choice(fallback, why=f"fewer than {MIN_VALIDATION} validation "
                  "images to choose it on")
  start = time.monotonic()
  rng = np.random.default_rng(hparams.random_seed)
  x, y = _rows(train_set, MAX_SEARCH_ROWS, rng)
  vx, vy = _rows(validation_set, MAX_SEARCH_ROWS, rng)
  steps = min(hparams.how_many_training_steps, MAX_SEARCH_STEPS)
  key = None
  if memo_root:  # The same inputs as a run before: its choice.
    key = memo.digest([VERSION, [list(t) for t in settings], class_count,
                       steps, hparams.learning_rate, hparams.train_batch_size,
                       hparams.class_sampling, hparams.random_seed, x, y,
                       vx, vy])
    kept = memo.load(memo_root, MEMO_KIND, key)
    if isinstance(kept, dict) and kept.get("tried"):
      tried = [Setting(t["weight_decay"], t["label_smoothing"])
               for t in kept["tried"]]
      chosen = kept["chosen"]
      return Choice(Setting(chosen["weight_decay"],
                            chosen["label_smoothing"]), tuple(tried),
                    tuple(t["validation_cross_entropy"]
                          for t in kept["tried"]),
                    tuple(t["validation_accuracy"] for t in kept["tried"]),
                    why="searched, kept from a run on the same data",
                    steps=kept["steps"])
  xent, accuracy = train_side_by_side(x, y, vx, vy, class_count, settings,
                                      hparams, steps)
  # Lowest cross entropy; among equal ones (to 1e-4), the first: the grid
  # lists weaker settings first.
  best = min(range(len(settings)),
             key=lambda i: (round(float(xent[i]), 4), i))
  choice = Choice(settings[best], tuple(settings),
                  tuple(float(v) for v in xent),
                  tuple(float(v) for v in accuracy),
                  seconds=time.monotonic() - start, steps=steps)
  if key is not None:
    memo.store(memo_root, MEMO_KIND, key, choice.to_json())
  return choice


def resolved(hparams: HParams, choice: Choice) -> HParams:
  """hparams with the chosen weight decay and label smoothing."""
  return hparams._replace(weight_decay=choice.chosen.weight_decay,
                          label_smoothing=choice.chosen.label_smoothing)


def _rows(labeled: LabeledBottlenecks, limit: int, rng: np.random.Generator
          ) -> Tuple[np.ndarray, np.ndarray]:
  """x [n, D], y [n] of the set, or of `limit` of its rows at random."""
  if len(labeled) <= limit:
    return labeled.in_memory().x, labeled.y
  pick = np.sort(rng.choice(len(labeled), size=limit, replace=False))
  return labeled.take(pick), labeled.y[pick]


def train_side_by_side(x: np.ndarray, y: np.ndarray, vx: np.ndarray,
                       vy: np.ndarray, class_count: int,
                       settings: Sequence[Setting], hparams: HParams,
                       steps: Optional[int] = None
                       ) -> Tuple[np.ndarray, np.ndarray]:
  """Trains one softmax layer per setting on the same batches (the run's
  sampler, steps up to MAX_SEARCH_STEPS, batch size and learning rate);
  returns each layer's
  validation (cross entropy [K], accuracy [K]) on vx [m, D], vy [m]."""
  steps = steps or min(hparams.how_many_training_steps, MAX_SEARCH_STEPS)
  rng = np.random.default_rng(hparams.random_seed)
  sampler = train.SAMPLERS[hparams.class_sampling](y, class_count, rng)
  rows = np.stack([sampler.sample(hparams.train_batch_size)
                   for _ in range(steps)]).astype(np.int32)
  k, d, c = len(settings), x.shape[1], class_count
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(hparams.random_seed)
    data_x = tf1.placeholder(tf.float32, [None, d])
    data_y = tf1.placeholder(tf.int64, [None])
    step_rows = tf1.placeholder(tf.int32, [None, None])
    val_x = tf1.placeholder(tf.float32, [None, d])
    val_y = tf1.placeholder(tf.int64, [None])
    # The K layers side by side in one [D, K * C] matrix: a step is one
    # plain matrix product, as for one layer, only K times wider.
    decay = tf.constant(np.repeat([s.weight_decay for s in settings], c)
                        .astype(np.float32))  # [K * C]
    smooth = tf.constant([s.label_smoothing for s in settings],
                         tf.float32)[None, :, None]  # [1, K, 1]
    lr = tf.constant(hparams.learning_rate, tf.float32)

    def logits_of(inputs, w, b):  # [n, D] -> [n, K, C]
      return tf.reshape(tf.matmul(inputs, w) + b, [-1, k, c])

    def body(i, w, b):
      labels = tf.gather(data_y, step_rows[i])
      logits = logits_of(tf.gather(data_x, step_rows[i]), w, b)
      target = (tf.one_hot(labels, c)[:, None, :] * (1 - smooth) +
                smooth / c)
      xent = tf.nn.softmax_cross_entropy_with_logits(
          labels=target, logits=logits)  # [B, K]
      # Sum over the layers of each one's mean loss: each layer's gradient
      # is its own loss's.
      loss = (tf.reduce_sum(tf.reduce_mean(xent, axis=0)) +
              0.5 * tf.reduce_sum(decay * tf.square(w)))
      grad_w, grad_b = tf.gradients(loss, [w, b])
      return i + 1, w - lr * grad_w, b - lr * grad_b

    w0 = tf1.truncated_normal([d, k * c], stddev=0.001)
    b0 = tf.zeros([k * c])
    _, w, b = tf1.while_loop(lambda i, *_: i < tf.shape(step_rows)[0], body,
                             [tf.constant(0), w0, b0])
    val_logits = logits_of(val_x, w, b)  # [m, K, C]
    labels = tf.tile(val_y[:, None], [1, k])  # [m, K]
    val_xent = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=val_logits), axis=0)
    val_acc = tf.reduce_mean(tf.cast(tf.equal(
        tf.argmax(val_logits, 2), labels), tf.float32), axis=0)
  graph.finalize()
  with tf1.Session(graph=graph) as session:
    return session.run([val_xent, val_acc], {
        data_x: x, data_y: y, step_rows: rows, val_x: vx, val_y: vy})
