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
  exact = counts * limit / len(y)
  share = np.maximum(1, np.floor(exact)).astype(int)
  # The rows left go to the largest remainders (exactly `limit` in all
  # unless every class needs its one row).
  left = limit - int(share.sum())
  if left > 0:
    share[np.argsort(-(exact - np.floor(exact)), kind="stable")[:left]] += 1
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


# How sharply the unknown class's probability rises around the threshold:
# p = sigmoid(SHARPNESS * (d / t - 1)), so a distance 5% above the threshold
# gives 0.92 and 5% below 0.08.
SHARPNESS = 50.0
# The kept training photos by default (--unknown_keep): 1 000 x D floats
# in every export (3.1 MB at D = 768). On the cats and dogs, 500 kept
# scored as all 1 600 did (benchmarks/unknown.py).
DEFAULT_KEEP = 1000


@dataclasses.dataclass(frozen=True)
class UnknownClass:
  """The extra "unknown" class: its probability from the score, inside
  every export the same way.

  For a photo's bottleneck x [D] and the new layer's probabilities q
  [classes]: d = 1 - (k-th largest cosine of x with the prototypes),
  p = sigmoid(scale * (d - threshold)), and the classifier answers
  [q * (1 - p), p]: classes + 1 probabilities that sum to 1.

  prototypes: float32 [m, D], unit rows (kept training photos); k: the
  neighbour; threshold: a distance; scale: 1 / distance.
  """
  prototypes: np.ndarray
  k: int
  threshold: float
  scale: float

  @classmethod
  def disabled(cls, size: int) -> "UnknownClass":
    """An unknown class that is never answered (probability 0; for graphs
    written before the class is fitted: intermediate graphs)."""
    return cls(np.zeros([1, size], np.float32), 1, 3.0, SHARPNESS)

  def score(self, x: np.ndarray) -> np.ndarray:
    """float32 [n, D] bottlenecks -> float32 [n] distances."""
    return NeighbourScore(self.prototypes, self.k)(np.asarray(x, np.float32))

  def probability(self, x: np.ndarray) -> np.ndarray:
    """float32 [n, D] -> float32 [n], the unknown class's probability."""
    return _sigmoid(self.scale * (self.score(x) - self.threshold))

  def extend(self, probabilities: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The layer's probabilities [n, classes] and bottlenecks [n, D] ->
    float32 [n, classes + 1], as the exported graph computes them."""
    p = self.probability(x)[:, None]
    return np.concatenate([np.asarray(probabilities, np.float32) * (1 - p),
                           p], axis=1).astype(np.float32)

  @property
  def megabytes(self) -> float:
    return self.prototypes.nbytes / 1e6

  def to_json(self) -> dict:
    return dict(score=f"cosine distance to the {_ordinal(self.k)} nearest of "
                f"{len(self.prototypes)} kept training photos",
                kept_photos=len(self.prototypes), k=self.k,
                threshold=self.threshold, scale=self.scale,
                megabytes=round(self.megabytes, 3))


def fit_unknown(train_x: np.ndarray, train_y: np.ndarray,
                validation_x: np.ndarray, validation_probabilities: np.ndarray,
                accept: float = DEFAULT_ACCEPT, keep: int = DEFAULT_KEEP,
                k: int = DEFAULT_K, seed: int = 0,
                others_x: Optional[np.ndarray] = None,
                others_probabilities: Optional[np.ndarray] = None,
                reject: float = 0.0) -> UnknownClass:
  """The unknown class whose answer accepts `accept` of the validation
  photos (their top-1 is a known class), to within one photo; or, with
  `reject`, the one that answers "unknown" for that share of the photos of
  none of the classes `others_x` [u, D] (the layer's probabilities for
  them [u, classes]).

  train_x [n, D], train_y [n]: the training photos (originals) to keep at
  most `keep` of; validation_x [v, D] and the layer's probabilities for
  them [v, classes]. Without validation photos, the training photos' own
  distances (leaving each out) stand in.
  """
  score = NeighbourScore.fit(train_x, train_y, keep, k, seed)
  if len(validation_x):
    d = score(validation_x)
    top = np.max(validation_probabilities, axis=1)
  else:  # The k+1-th neighbour of a kept photo leaves itself out.
    d = NeighbourScore(score.prototypes, min(k + 1, len(score.prototypes)))(
        score.prototypes)
    top = np.ones(len(d), np.float32)
  if not len(d):
    raise ValueError("no photos to set the unknown threshold on")
  if reject:  # Accepting 1 - reject of the others instead.
    d = score(others_x)
    top = np.max(others_probabilities, axis=1)
    accept = 1.0 - reject
  t = max(threshold(d, accept), 1e-6)

  def accepted(t: float) -> float:
    # A known class stays on top when q_max * (1 - p) >= p.
    p = _sigmoid(SHARPNESS / t * (d - t))
    return float(np.mean(top * (1 - p) >= p))
  # The accepted share grows with t: bisect to the asked one.
  low, high = t / 2, t * 2
  while accepted(high) < accept and high < 4:
    high *= 2
  while accepted(low) >= accept and low > 1e-6:
    low /= 2
  for _ in range(40):
    mid = (low + high) / 2
    if accepted(mid) >= accept:
      high = mid
    else:
      low = mid
  return UnknownClass(score.prototypes, score.k, float(high),
                      float(SHARPNESS / high))


def _sigmoid(z: np.ndarray) -> np.ndarray:
  z = np.asarray(z, np.float64)
  return (0.5 * (1 + np.tanh(0.5 * z))).astype(np.float32)


def _ordinal(n: int) -> str:
  return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


# Bins of the score histograms in report.json and report.html.
HISTOGRAM_BINS = 30


def evaluate(unknown: UnknownClass, label: str, accept: float,
             test_x: np.ndarray, test_truth: np.ndarray,
             test_probabilities: np.ndarray,
             validation_accepted: Optional[float] = None,
             others_x: Optional[np.ndarray] = None,
             others_probabilities: Optional[np.ndarray] = None,
             others_paths=()) -> dict:
  """What report.json says of the unknown class.

  test_x [n, D] and test_truth [n]: the known classes' test photos;
  test_probabilities [n, classes + 1]: the classifier's answers (the unknown
  class last); others_x [u, D]: photos of none of the classes (or None)
  and others_probabilities [u, classes + 1] the classifier's answers.
  """
  unknown_index = test_probabilities.shape[1] - 1
  answer = test_probabilities.argmax(1)
  rejected = answer == unknown_index
  right = answer == np.asarray(test_truth)
  test_d = unknown.score(test_x) if len(test_x) else np.zeros([0])
  out = dict(unknown.to_json(), label=label, accept=accept,
             validation_accepted=validation_accepted,
             test_photos=int(len(answer)),
             test_rejected=_share(rejected.sum(), len(answer)),
             test_accuracy=_share(right.sum(), len(answer)),
             test_accuracy_accepted=_share(right[~rejected].sum(),
                                           (~rejected).sum()),
             test_accepted=int((~rejected).sum()))
  scores = [test_d]
  if others_x is not None:
    others_d = unknown.score(others_x) if len(others_x) else np.zeros([0])
    others_rejected = np.asarray(others_probabilities).argmax(1) == (
        unknown_index)
    out.update(others_photos=int(len(others_d)),
               others_rejected=_share(others_rejected.sum(), len(others_d)),
               auroc=auroc(test_d, others_d),
               others_missed=[str(p) for p, r in zip(others_paths,
                                                    others_rejected)
                              if not r][:50])
    scores.append(others_d)
  high = max([float(np.max(s)) for s in scores if len(s)] +
             [unknown.threshold * 1.5])
  edges = np.linspace(0.0, high * 1.0001, HISTOGRAM_BINS + 1)
  out["histogram"] = dict(
      edges=[round(float(e), 5) for e in edges],
      test=np.histogram(test_d, edges)[0].tolist(),
      **({"others": np.histogram(scores[1], edges)[0].tolist()}
         if others_x is not None else {}))
  return out


def describe(report: dict) -> str:
  """The log line of evaluate's report."""
  text = (f"Unknown class {report['label']!r}: threshold {report['threshold']:.4f} "
          + (f"(by {report['threshold_from']}) " if report.get(
              "threshold_from") else "") +
          f"({report['score']}, {report['megabytes']:.1f} MB in each export); "
          f"validation photos keeping a known class: "
          f"{_pct(report['validation_accepted'])}; "
          f"test photos answered unknown: {_pct(report['test_rejected'])}; "
          f"test accuracy {_pct(report['test_accuracy'])} counting those as "
          f"errors, {_pct(report['test_accuracy_accepted'])} of the "
          f"{report['test_accepted']} accepted")
  if "others_photos" in report:
    text += (f"; --unknown_dir photos answered unknown: "
             f"{_pct(report['others_rejected'])} of "
             f"{report['others_photos']}, AUROC "
             + ("n/a" if report["auroc"] is None else
                f"{report['auroc']:.3f}"))
  return text


def _share(count, total) -> Optional[float]:
  return float(count) / float(total) if total else None


def _pct(value: Optional[float]) -> str:
  return "n/a" if value is None else f"{value * 100:.1f}%"


def layer_probabilities(x: np.ndarray, weights: np.ndarray,
                        biases: np.ndarray) -> np.ndarray:
  """The new layer's softmax in numpy: x [n, D] -> float32 [n, classes]."""
  logits = np.asarray(x, np.float64) @ weights + biases
  logits -= logits.max(axis=1, keepdims=True)
  e = np.exp(logits)
  return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
