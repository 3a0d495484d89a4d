"""The new layer's weight decay and learning rate, chosen by cross-validation.

Where --weight_decay (by default) or --label_smoothing is -1, a grid of
settings is tried: weight decay in WEIGHT_DECAYS, and with
--label_smoothing=-1 smoothing in LABEL_SMOOTHINGS. Each setting is scored
by the cross entropy of its layer on images that layer did not learn from,
the layer being the exact optimum of the loss the final layer's SGD
follows (mean cross entropy + decay / 2 * |W|^2), found by a full-batch
solver (solver.py) in a few dozen passes over the rows, each solve starting
from the previous decay's optimum:

- cross-validation (fewer than CV_BELOW_VALIDATION validation images): the
  original training and validation images are split into FOLDS stratified
  folds (3 where the rows are many, see _folds), an image and all its
  augmented copies in one fold; one layer per setting and fold learns from
  the other folds' rows (copies included), and only original images are
  scored, each once per setting by a layer that never saw it or a copy of
  it;
- with more validation images: one layer per setting trained on the
  training images, scored on the original validation images.

The setting with the lowest mean cross entropy wins; ties go to the first
in the grid (the weaker decay). The learning rate (where --weight_decay is
-1) is then the largest of --learning_rate times LEARNING_RATE_SCALES at
which SGD is stable at the chosen optimum: rate x curvature <= MAX_RATE_X_CURVATURE,
the curvature being the largest eigenvalue of the loss's Hessian there
(solver.top_curvature); a larger stable rate brings the steps nearer the
optimum that was scored, and the cosine schedule (schedules.py) removes
the noise of the last steps, so the final layer ends near the layer the
search chose (tests/test_regularization.py checks it). The real training
then runs with the setting on the training images only (validation stays
held out for the curves and stage 2).

Before this solver the search trained 60 SGD layers of 4000 steps side by
side (3.5 s at 500 photos); its choice scored the same on
benchmarks/head_quality.py (see the README).
"""

import dataclasses
import itertools
import time
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from cache import memo
from retrain.config import HParams
from retrain.features.bottlenecks import AUGMENTED_MARK
from retrain.features.sets import LabeledBottlenecks
from retrain.training import schedules, side_by_side, solver

# The grid (for a flag left at -1). Weight decay is per example (the loss
# is the batch's mean cross entropy + wd / 2 * |W|^2); no 0: without decay
# the optimum of separable classes lies at infinity.
WEIGHT_DECAYS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
LEARNING_RATE_SCALES = (1.0, 10.0)
# SGD takes the largest of these rates with rate x curvature at most this
# (plain gradient steps are stable below 2).
MAX_RATE_X_CURVATURE = 2.0
# Only with --label_smoothing=-1: validation cross entropy, which picks the
# setting, rarely favours smoothing (it spends confidence on purpose).
LABEL_SMOOTHINGS = (0.0, 0.1)

FOLDS = 5
# Fewer folds (FEW_FOLDS) where rows x features x classes exceed this: the
# solves' cost grows with it, and many rows need fewer folds to score well.
FOLDS_WORK = 4_000_000
FEW_FOLDS = 3
# Cross-validation below this many validation images; above, the
# validation set alone scores the settings.
CV_BELOW_VALIDATION = 1000

# The search solves on at most this many rows (a random subset of larger
# sets, read from the memory-mapped index).
MAX_SEARCH_ROWS = 100_000
# ... and at most this many rows x features x classes per set (a pass of
# the solver over them costs about 4 flops each: ~0.1 s on 2 cores), at
# least MIN_SEARCH_ROWS: hundreds of classes search on fewer rows.
MAX_SEARCH_WORK = 2_000_000_000
MIN_SEARCH_ROWS = 2_000

# Fewer training and validation images than this: no search (its choice
# would be noise); the fallback below is used.
MIN_IMAGES = 50
FALLBACK_DECAY = 1e-2

# Raised when the search changes; part of the kept choices' key.
VERSION = 4
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
  scored_on: str = ""  # "5-fold cross-validation of the 412 ...", ...
  seconds: float = 0.0
  schedule: str = "constant"  # Of the final layer's rate (schedules.py).
  # The loss's largest curvature at the chosen optimum (0: not measured),
  # which set the learning rate.
  curvature: float = 0.0

  def describe(self) -> str:
    """One log line."""
    chosen = (f"weight decay {self.chosen.weight_decay:g}, learning rate "
              f"{self.chosen.learning_rate:g} ({self.schedule}), label "
              f"smoothing {self.chosen.label_smoothing:g}")
    if not self.why.startswith("searched"):
      return f"Regularization: {chosen} ({self.why})"
    best = self.tried.index(self.chosen)
    rate = (f"; the rate the largest stable at curvature "
            f"{self.curvature:.3g}" if self.curvature else "")
    return (f"Regularization: {chosen}, chosen of {len(self.tried)} settings "
            f"by cross entropy on {self.scored_on} "
            f"({self.cross_entropy[best]:.4f}, accuracy "
            f"{100 * self.accuracy[best]:.1f}%{rate}) "
            + (f"in {self.seconds:.2f} s" if self.why == "searched" else
               "(kept from a run on the same data)") +
            "; --weight_decay sets it (0: the classic training)")

  def to_json(self) -> dict:
    return dict(chosen=self.chosen._asdict(), why=self.why,
                scored_on=self.scored_on, schedule=self.schedule,
                curvature=self.curvature, seconds=self.seconds,
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
               scored_on=kept["scored_on"], schedule=kept["schedule"],
               curvature=kept["curvature"])


def grid(hparams: HParams) -> List[Setting]:
  """The settings to try, at --learning_rate (the rate is chosen after):
  the grid for each flag left at -1, else its value."""
  decays = (hparams.weight_decay,) if hparams.weight_decay >= 0 else (
      WEIGHT_DECAYS)
  smoothings = (LABEL_SMOOTHINGS if hparams.label_smoothing < 0
                else (hparams.label_smoothing,))
  return [Setting(w, s, hparams.learning_rate)
          for w, s in itertools.product(decays, smoothings)]


def _folds(rows: int, bottleneck_size: int, class_count: int,
           validation_originals: int) -> int:
  """Cross-validation folds for the search; 0: scored on the validation
  set (enough of it to rank the settings)."""
  if validation_originals >= CV_BELOW_VALIDATION:
    return 0
  if rows * bottleneck_size * class_count > FOLDS_WORK:
    return FEW_FOLDS
  return FOLDS


def groups_of(paths: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
  """(int64 [n] group of each row: its original image; bool [n] whether
  the row is that original, not an augmented copy of it)."""
  originals = [p.split(AUGMENTED_MARK, 1)[0] for p in paths]
  _, group = np.unique(originals, return_inverse=True)
  return (group.astype(np.int64),
          np.array([AUGMENTED_MARK not in p for p in paths], bool))


def choose(train_set: LabeledBottlenecks, validation_set: LabeledBottlenecks,
           class_count: int, hparams: HParams, memo_root: str = "") -> Choice:
  """The regularization for the run: the flags' values where set, the rest
  chosen on held-out cross entropy (see the module docstring). With
  memo_root (the cache folder), a choice made before on the same vectors
  and settings is read from there (cache/memo.py), a new one kept."""
  settings = grid(hparams)
  schedule = schedules.of(hparams)
  if len(settings) == 1 and hparams.weight_decay >= 0:
    return Choice(settings[0], why="set by flags", schedule=schedule)
  if len(train_set) + len(validation_set) < MIN_IMAGES or not len(train_set):
    return Choice(Setting(
        hparams.weight_decay if hparams.weight_decay >= 0 else FALLBACK_DECAY,
        max(hparams.label_smoothing, 0.0), hparams.learning_rate),
                  why=f"fewer than {MIN_IMAGES} training and validation "
                  "images to choose it on", schedule=schedule)
  start = time.monotonic()
  rng = np.random.default_rng(hparams.random_seed)
  limit = search_rows(train_set.x.shape[1], class_count)
  x, y, paths = _rows(train_set, limit, rng)
  vx, vy, vpaths = _rows(validation_set, limit, rng)
  group, original = groups_of(list(paths) + list(vpaths))
  folds = _folds(len(y) + len(vy), x.shape[1], class_count,
                 int(original[len(y):].sum()))
  key = None
  if memo_root:  # The same inputs as a run before: its choice.
    key = memo.digest([VERSION, [list(t) for t in settings], folds,
                       class_count, schedule, list(LEARNING_RATE_SCALES),
                       hparams.random_seed, x, y, vx, vy, group, original])
    kept = memo.load(memo_root, MEMO_KIND, key)
    if isinstance(kept, dict) and kept.get("tried"):
      return Choice.from_json(kept,
                              "searched, kept from a run on the same data")
  if folds:
    fold = side_by_side.fold_of(np.concatenate([y, vy]), folds,
                                np.random.default_rng(hparams.random_seed),
                                group)
    xent, accuracy = cross_validate(
        np.concatenate([x, vx]), np.concatenate([y, vy]), class_count,
        settings, fold, original)
    scored = int(original.sum())
    scored_on = (f"{folds}-fold cross-validation of the {scored} "
                 "training and validation images" +
                 (f" (and {len(original) - scored} augmented copies, which "
                  "only train, each in its image's fold)"
                  if scored < len(original) else ""))
  else:
    keep = original[len(y):]
    xent, accuracy = held_out(x, y, vx[keep], vy[keep], class_count,
                              settings)
    scored_on = f"the {int(keep.sum())} validation images"
  # Lowest cross entropy; among equal ones (to 1e-4), the first.
  xent = np.where(np.isfinite(xent), xent, np.inf)
  best = min(range(len(settings)), key=lambda i: (round(float(xent[i]), 4),
                                                  i))
  rate, curvature = hparams.learning_rate, 0.0
  if hparams.weight_decay < 0:
    rate, curvature = learning_rate(x, y, class_count, settings[best],
                                    hparams.learning_rate)
  settings = [s._replace(learning_rate=rate) for s in settings]
  choice = Choice(settings[best], tuple(settings),
                  tuple(float(v) for v in xent),
                  tuple(float(v) for v in accuracy), scored_on=scored_on,
                  seconds=time.monotonic() - start, schedule=schedule,
                  curvature=curvature)
  if key is not None:
    memo.store(memo_root, MEMO_KIND, key, choice.to_json())
  return choice


def learning_rate(x: np.ndarray, y: np.ndarray, class_count: int,
                  setting: Setting, base: float) -> Tuple[float, float]:
  """(rate, curvature): the largest of base x LEARNING_RATE_SCALES whose
  product with the largest curvature of the setting's loss at its optimum
  on x [n, D], y [n] is at most MAX_RATE_X_CURVATURE (base if none)."""
  optimum = solver.fit(x, y, class_count, setting.weight_decay,
                       setting.label_smoothing)
  curvature = solver.top_curvature(x, optimum, setting.weight_decay)
  stable = [base * r for r in LEARNING_RATE_SCALES
            if base * r * curvature <= MAX_RATE_X_CURVATURE]
  return (max(stable) if stable else base), curvature


def resolved(hparams: HParams, choice: Choice) -> HParams:
  """hparams with the chosen weight decay, label smoothing and rate."""
  return hparams._replace(weight_decay=choice.chosen.weight_decay,
                          label_smoothing=choice.chosen.label_smoothing,
                          learning_rate=choice.chosen.learning_rate,
                          learning_rate_schedule=schedules.of(hparams))


def search_rows(bottleneck_size: int, class_count: int) -> int:
  """Rows of each set the search solves on, at most."""
  return int(min(MAX_SEARCH_ROWS, max(
      MIN_SEARCH_ROWS, MAX_SEARCH_WORK // (bottleneck_size * class_count))))


def _rows(labeled: LabeledBottlenecks, limit: int, rng: np.random.Generator
          ) -> Tuple[np.ndarray, np.ndarray, Sequence[str]]:
  """x [n, D], y [n] and paths of the set, or of `limit` of its rows at
  random."""
  if len(labeled) <= limit:
    return (np.asarray(labeled.in_memory().x, np.float32), labeled.y,
            labeled.paths)
  pick = np.sort(rng.choice(len(labeled), size=limit, replace=False))
  return (np.asarray(labeled.take(pick), np.float32), labeled.y[pick],
          [labeled.paths[i] for i in pick])


def _path(x, y, class_count, settings, scored_x, scored_y):
  """(cross entropy [K], accuracy [K]) on scored_x, scored_y of each
  setting's optimum on x, y; solved from the strongest decay down, each
  solve starting from the last optimum of the same smoothing."""
  xent, accuracy = np.zeros(len(settings)), np.zeros(len(settings))
  last = {}
  order = sorted(range(len(settings)),
                 key=lambda i: -settings[i].weight_decay)
  for i in order:
    s = settings[i]
    last[s.label_smoothing] = solver.fit(
        x, y, class_count, s.weight_decay, s.label_smoothing,
        start=last.get(s.label_smoothing))
    xent[i], accuracy[i] = solver.cross_entropy(
        scored_x, scored_y, last[s.label_smoothing].w,
        last[s.label_smoothing].b)
  return xent, accuracy


def held_out(x: np.ndarray, y: np.ndarray, vx: np.ndarray, vy: np.ndarray,
             class_count: int, settings: Sequence[Setting]
             ) -> Tuple[np.ndarray, np.ndarray]:
  """(cross entropy [K], accuracy [K]) on vx [m, D], vy [m] of each
  setting's optimum on x [n, D], y [n]."""
  return _path(x, y, class_count, settings, vx, vy)


def cross_validate(x: np.ndarray, y: np.ndarray, class_count: int,
                   settings: Sequence[Setting], fold: np.ndarray,
                   scored: Optional[np.ndarray] = None
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """(cross entropy [K], accuracy [K]) over the scored rows (bool [n];
  default all) of x [n, D], y [n], each scored by its setting's optimum on
  the rows of the other folds (fold: int [n])."""
  scored = np.ones(len(y), bool) if scored is None else scored
  total = np.zeros((2, len(settings)))
  for f in np.unique(fold):
    out, score = fold != f, (fold == f) & scored
    if not score.any():
      continue
    xent, accuracy = _path(x[out], y[out], class_count, settings, x[score],
                           y[score])
    total += np.stack([xent, accuracy]) * score.sum()
  return tuple(total / max(int(scored.sum()), 1))
