"""The new layer's weight decay and learning rate, chosen by cross-validation.

Where --weight_decay (by default) or --label_smoothing is -1, a grid of
settings is tried: weight decay in WEIGHT_DECAYS, learning rate
--learning_rate times LEARNING_RATE_SCALES (plain SGD on a fixed number of
steps stops short of the optimum when the rate is small for the model's
features; a larger rate gets nearer it), and with --label_smoothing=-1
smoothing in LABEL_SMOOTHINGS. Each setting is scored by its layers' cross
entropy on images they did not learn from:

- cross-validation (fewer than CV_BELOW_VALIDATION validation images): the
  training and validation images together are split into FOLDS stratified
  folds; one layer per setting and fold learns from the other folds, all of
  them side by side in one matrix (side_by_side.py) on shared batches, so
  every image is scored once per setting by a layer that never saw it;
- with more validation images: one layer per setting trained on the
  training images, scored on the validation images.

A few dozen validation images rank the settings by chance (one lucky image
moves the pick); every image scored once ranks them like the tuned
logistic regression's inner cross-validation (benchmarks/head_quality.py).
Each layer trains for the run's steps (at most MAX_SEARCH_STEPS), batch
size and sampling, on the schedule the chosen layer will train on
(schedules.of: cosine unless --learning_rate_schedule says otherwise).
The setting with the lowest mean cross entropy wins; ties go to the first
in the grid, the weaker decay and smaller rate. The
real training then runs with it on the training images only (on training
and validation together it was not better: 5-fold test accuracy +0.6 and
+0.1 point with MobileNet v1 0.75/224 on the dev flowers and the cats and
dogs, -0.3 and -0.4 with EfficientNet-Lite0 and -Lite2 on the flowers;
validation stays held out for the curves and stage 2).

Where the grid's layers would be too many weights (many classes or
features), fewer folds, then a smaller grid, are used (see _plan).
"""

import dataclasses
import itertools
import time
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from cache import memo
from retrain.config import HParams
from retrain.features.sets import LabeledBottlenecks
from retrain.training import schedules, side_by_side

# The grid (for a flag left at -1). Weight decay is per example (the loss
# is the batch's mean cross entropy + wd / 2 * |W|^2).
WEIGHT_DECAYS = (0.0, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
LEARNING_RATE_SCALES = (1.0, 10.0)
# Only with --label_smoothing=-1: validation cross entropy, which picks the
# setting, rarely favours smoothing (it spends confidence on purpose).
LABEL_SMOOTHINGS = (0.0, 0.1)

FOLDS = 5
# Cross-validation below this many validation images; above, the
# validation set alone scores the settings.
CV_BELOW_VALIDATION = 1000
# At most this many weights (layers x classes x bottleneck size) side by
# side, which bounds a search step's cost (12 settings x 5 folds x 5
# classes x 1280 features: 384 000); more classes or features use fewer
# folds, then the smaller grids of _plan.
MAX_WEIGHTS = 400_000

# The search trains on at most this many rows (a random subset of larger
# sets, read from the memory-mapped index), for at most this many steps (a
# longer run's layers keep the setting chosen at this length).
MAX_SEARCH_ROWS = 100_000
MAX_SEARCH_STEPS = 4000

# Fewer training and validation images than this: no search (its choice
# would be noise); the fallback below is used.
MIN_IMAGES = 50
FALLBACK_DECAY = 1e-2

# Raised when the search changes; part of the kept choices' key.
VERSION = 3
MEMO_KIND = "regularization"


class Setting(NamedTuple):
  weight_decay: float
  label_smoothing: float
  learning_rate: float


@dataclasses.dataclass(frozen=True)
class Choice:
  """What was tried, what it scored on held-out images, what was chosen."""
  chosen: Setting
  tried: Tuple[Setting, ...] = ()
  cross_entropy: Tuple[float, ...] = ()  # Mean, on held-out images.
  accuracy: Tuple[float, ...] = ()
  why: str = "searched"  # Or "set by flags", "too few images".
  scored_on: str = ""  # "5-fold cross-validation of 412 images", ...
  seconds: float = 0.0
  steps: int = 0  # Steps each candidate was trained for.
  schedule: str = "constant"  # Of the rate (schedules.py), in all of them.

  def describe(self) -> str:
    """One log line."""
    chosen = (f"weight decay {self.chosen.weight_decay:g}, learning rate "
              f"{self.chosen.learning_rate:g} ({self.schedule}), label "
              f"smoothing {self.chosen.label_smoothing:g}")
    if not self.why.startswith("searched"):
      return f"Regularization: {chosen} ({self.why})"
    best = self.tried.index(self.chosen)
    plain = [i for i, s in enumerate(self.tried)
             if s.weight_decay == 0 and s.label_smoothing == 0]
    versus = ("" if not plain or plain[0] == best else
              f"; classic: {self.cross_entropy[plain[0]]:.4f}, "
              f"{100 * self.accuracy[plain[0]]:.1f}%")
    return (f"Regularization: {chosen}, chosen of {len(self.tried)} settings "
            f"by cross entropy on {self.scored_on} "
            f"({self.cross_entropy[best]:.4f}, accuracy "
            f"{100 * self.accuracy[best]:.1f}%{versus}) "
            + (f"in {self.seconds:.1f} s" if self.why == "searched" else
               "(kept from a run on the same data)") +
            "; --weight_decay sets it (0: the classic training)")

  def to_json(self) -> dict:
    return dict(chosen=self.chosen._asdict(), why=self.why,
                scored_on=self.scored_on, steps=self.steps,
                schedule=self.schedule,
                tried=[dict(s._asdict(), cross_entropy=x, accuracy=a)
                       for s, x, a in zip(self.tried, self.cross_entropy,
                                          self.accuracy)])

  @classmethod
  def from_json(cls, kept: dict, why: str) -> "Choice":
    tried = tuple(Setting(t["weight_decay"], t["label_smoothing"],
                          t["learning_rate"]) for t in kept["tried"])
    return cls(Setting(**kept["chosen"]), tried,
               tuple(t["cross_entropy"] for t in kept["tried"]),
               tuple(t["accuracy"] for t in kept["tried"]), why=why,
               scored_on=kept["scored_on"], steps=kept["steps"],
               schedule=kept["schedule"])


def grid(hparams: HParams, smaller: int = 0) -> List[Setting]:
  """The settings to try: the grid for each flag left at -1, else its
  value; the learning rate searched with the weight decay. smaller = 1:
  the learning rate not searched; 2: also only the decays 0, 1e-2, 1e-1."""
  decays = (hparams.weight_decay,) if hparams.weight_decay >= 0 else (
      WEIGHT_DECAYS if smaller < 2 else (0.0, 1e-2, 1e-1))
  smoothings = (LABEL_SMOOTHINGS if hparams.label_smoothing < 0
                else (hparams.label_smoothing,))
  scales = (LEARNING_RATE_SCALES if hparams.weight_decay < 0 and smaller < 1
            else (1.0,))
  return [Setting(w, s, hparams.learning_rate * r)
          for r, w, s in itertools.product(scales, decays, smoothings)]


def _plan(hparams: HParams, class_count: int, bottleneck_size: int,
          validation_images: int) -> Tuple[List[Setting], int]:
  """(settings, folds; 0: scored on the validation set) within
  MAX_WEIGHTS."""
  width = class_count * bottleneck_size
  grids = [grid(hparams, smaller) for smaller in range(3)]
  if validation_images < CV_BELOW_VALIDATION:  # Cross-validation first.
    for settings in grids:
      for folds in (FOLDS, 3):
        if len(settings) * folds * width <= MAX_WEIGHTS:
          return settings, folds
  for settings in grids:
    if len(settings) * width <= MAX_WEIGHTS:
      return settings, 0
  return grids[-1], 0  # Very wide: the smallest grid, one layer each.


def choose(train_set: LabeledBottlenecks, validation_set: LabeledBottlenecks,
           class_count: int, hparams: HParams, memo_root: str = "") -> Choice:
  """The regularization for the run: the flags' values where set, the rest
  chosen on held-out cross entropy (see the module docstring). With
  memo_root (the cache folder), a choice made before on the same vectors
  and settings is read from there (cache/memo.py), a new one kept."""
  settings, folds = _plan(hparams, class_count, train_set.x.shape[1],
                          len(validation_set))
  if len(settings) == 1:
    return Choice(settings[0], why="set by flags",
                  schedule=schedules.of(hparams))
  if len(train_set) + len(validation_set) < MIN_IMAGES or not len(train_set):
    return Choice(Setting(
        hparams.weight_decay if hparams.weight_decay >= 0 else FALLBACK_DECAY,
        max(hparams.label_smoothing, 0.0), hparams.learning_rate),
                  why=f"fewer than {MIN_IMAGES} training and validation "
                  "images to choose it on", schedule=schedules.of(hparams))
  start = time.monotonic()
  rng = np.random.default_rng(hparams.random_seed)
  x, y = _rows(train_set, MAX_SEARCH_ROWS, rng)
  vx, vy = _rows(validation_set, MAX_SEARCH_ROWS, rng)
  steps = min(hparams.how_many_training_steps, MAX_SEARCH_STEPS)
  key = None
  if memo_root:  # The same inputs as a run before: its choice.
    key = memo.digest([VERSION, [list(t) for t in settings], folds,
                       class_count, steps, schedules.of(hparams),
                       hparams.train_batch_size,
                       hparams.class_sampling, hparams.random_seed, x, y,
                       vx, vy])
    kept = memo.load(memo_root, MEMO_KIND, key)
    if isinstance(kept, dict) and kept.get("tried"):
      return Choice.from_json(kept,
                              "searched, kept from a run on the same data")
  if folds:
    xent, accuracy = cross_validate(np.concatenate([x, vx]),
                                    np.concatenate([y, vy]), class_count,
                                    settings, hparams, steps, folds)
    scored_on = (f"{folds}-fold cross-validation of the {len(y) + len(vy)} "
                 "training and validation images")
  else:
    xent, accuracy = held_out(x, y, vx, vy, class_count, settings, hparams,
                              steps)
    scored_on = f"the {len(vy)} validation images"
  # Lowest cross entropy (a diverged layer's is infinite); among equal ones
  # (to 1e-4), the first.
  xent = np.where(np.isfinite(xent), xent, np.inf)
  best = min(range(len(settings)), key=lambda i: (round(float(xent[i]), 4),
                                                  i))
  choice = Choice(settings[best], tuple(settings),
                  tuple(float(v) for v in xent),
                  tuple(float(v) for v in accuracy), scored_on=scored_on,
                  seconds=time.monotonic() - start, steps=steps,
                  schedule=schedules.of(hparams))
  if key is not None:
    memo.store(memo_root, MEMO_KIND, key, choice.to_json())
  return choice


def resolved(hparams: HParams, choice: Choice) -> HParams:
  """hparams with the chosen weight decay, label smoothing and rate."""
  return hparams._replace(weight_decay=choice.chosen.weight_decay,
                          label_smoothing=choice.chosen.label_smoothing,
                          learning_rate=choice.chosen.learning_rate,
                          learning_rate_schedule=schedules.of(hparams))


def _rows(labeled: LabeledBottlenecks, limit: int, rng: np.random.Generator
          ) -> Tuple[np.ndarray, np.ndarray]:
  """x [n, D], y [n] of the set, or of `limit` of its rows at random."""
  if len(labeled) <= limit:
    return np.asarray(labeled.in_memory().x, np.float32), labeled.y
  pick = np.sort(rng.choice(len(labeled), size=limit, replace=False))
  return np.asarray(labeled.take(pick), np.float32), labeled.y[pick]


def _scores(logits: np.ndarray, y: np.ndarray
            ) -> Tuple[np.ndarray, np.ndarray]:
  """(mean cross entropy [K], accuracy [K]) of logits [n, K, C], y [n]."""
  log_p = side_by_side.log_softmax(logits)
  xent = -log_p[np.arange(len(y)), :, y].mean(0)
  return xent, (logits.argmax(-1) == y[:, None]).mean(0)


def _train(x, y, class_count, settings, hparams, steps, fold=None,
           held_out_folds=None, copies=1):
  rng = np.random.default_rng(hparams.random_seed)
  rows = side_by_side.batches(y, class_count, hparams, steps, rng)
  column = lambda field: [getattr(s, field) for s in settings] * copies
  return side_by_side.train_layers(
      x, y, rows, class_count, len(settings) * copies,
      column("learning_rate"), column("weight_decay"),
      column("label_smoothing"), hparams.random_seed, fold, held_out_folds,
      schedules.shares(schedules.of(hparams), steps))


def held_out(x: np.ndarray, y: np.ndarray, vx: np.ndarray, vy: np.ndarray,
             class_count: int, settings: Sequence[Setting], hparams: HParams,
             steps: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
  """(cross entropy [K], accuracy [K]) on vx [m, D], vy [m] of one layer
  per setting trained on x [n, D], y [n]."""
  steps = steps or min(hparams.how_many_training_steps, MAX_SEARCH_STEPS)
  layers = _train(x, y, class_count, settings, hparams, steps)
  return _scores(layers.logits(vx), vy)


def cross_validate(x: np.ndarray, y: np.ndarray, class_count: int,
                   settings: Sequence[Setting], hparams: HParams,
                   steps: Optional[int] = None, folds: int = FOLDS
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """(cross entropy [K], accuracy [K]) over all of x [n, D], y [n], each
  row scored by the layer of its setting that learnt from the other
  folds."""
  steps = steps or min(hparams.how_many_training_steps, MAX_SEARCH_STEPS)
  k = len(settings)
  fold = side_by_side.fold_of(y, folds, np.random.default_rng(
      hparams.random_seed))
  layers = _train(x, y, class_count, settings, hparams, steps, fold,
                  np.repeat(np.arange(folds), k), copies=folds)
  # Layer f * K + s: setting s, fold f held out.
  logits = layers.logits(x).reshape(len(y), folds, k, class_count)
  return _scores(logits[np.arange(len(y)), fold], y)
