"""How far a photo is from everything the classifier was shown (issue 36,
its measured core; the --unknown_label class builds on it).

The score is the cosine distance from a photo's bottleneck to its k-th
nearest training photo among at most `limit` kept ones (a stratified sample
of the training set: the size it adds to an export is limit x D floats).
A photo whose distance is above the threshold is "unknown"; the threshold
accepts a chosen share of the validation photos (never in the kept set, so
they score as new photos of known classes do). Pure numpy.
"""

import dataclasses
from typing import Optional

import numpy as np

# Kept training photos (rows of the export's prototype matrix) and the
# neighbour whose distance is the score.
DEFAULT_LIMIT = 2000
DEFAULT_K = 5
DEFAULT_ACCEPT = 0.95


def unit_rows(x: np.ndarray) -> np.ndarray:
  """float32 [n, D] -> each row L2-normalised (zero rows stay zero)."""
  x = np.asarray(x, np.float32)
  norms = np.sqrt(np.maximum(np.sum(x * x, axis=1, keepdims=True), 1e-12))
  return x / norms


def keep_rows(y: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
  """Indices of at most `limit` rows, each class kept in proportion (at
  least one row of each), in increasing order."""
  y = np.asarray(y)
  if len(y) <= limit:
    return np.arange(len(y))
  rng = np.random.default_rng(seed)
  classes, counts = np.unique(y, return_counts=True)
  share = np.maximum(1, np.floor(counts * limit / len(y))).astype(int)
  picked = [rng.choice(np.flatnonzero(y == c), min(n, cnt), replace=False)
            for c, n, cnt in zip(classes, share, counts)]
  return np.sort(np.concatenate(picked))


@dataclasses.dataclass(frozen=True)
class NeighbourScore:
  """The k-th nearest kept training photo's cosine distance.

  prototypes: float32 [m, D], unit rows; k: the neighbour (1-based).
  """
  prototypes: np.ndarray
  k: int = DEFAULT_K

  @classmethod
  def fit(cls, x: np.ndarray, y: np.ndarray, limit: int = DEFAULT_LIMIT,
          k: int = DEFAULT_K, seed: int = 0) -> "NeighbourScore":
    keep = keep_rows(y, limit, seed)
    return cls(unit_rows(np.asarray(x)[keep]), min(k, len(keep)))

  def __call__(self, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """float32 [n, D] -> float32 [n] distances in [0, 2]."""
    out = np.empty(len(x), np.float32)
    for start in range(0, len(x), batch):
      sims = unit_rows(x[start:start + batch]) @ self.prototypes.T
      kth = -np.partition(-sims, self.k - 1, axis=1)[:, self.k - 1]
      out[start:start + batch] = 1.0 - kth
    return out

  @property
  def megabytes(self) -> float:
    return self.prototypes.nbytes / 1e6


def threshold(known: np.ndarray, accept: float = DEFAULT_ACCEPT) -> float:
  """The distance below which `accept` of the known photos' scores lie."""
  if not len(known):
    raise ValueError("no known photos to set the threshold on")
  return float(np.quantile(np.asarray(known, np.float64), accept))


def auroc(known: np.ndarray, unknown: np.ndarray) -> Optional[float]:
  """The chance that an unknown photo scores above a known one (ties half):
  the area under the ROC curve of the score as an unknown detector."""
  known = np.asarray(known, np.float64)
  unknown = np.asarray(unknown, np.float64)
  if not len(known) or not len(unknown):
    return None
  scores = np.concatenate([known, unknown])
  order = scores.argsort(kind="mergesort")
  ranks = np.empty(len(scores))
  sorted_scores = scores[order]
  # Average ranks over ties.
  i = 0
  while i < len(scores):
    j = i
    while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2 + 1
    i = j + 1
  top = ranks[len(known):].sum() - len(unknown) * (len(unknown) + 1) / 2
  return float(top / (len(known) * len(unknown)))
