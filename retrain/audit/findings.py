"""The audit of a run's images, from their cached bottlenecks: duplicate
groups (and the leaks between sets they make), likely label errors and
outliers; as audit.json, one log line and report.html's Audit section.

Every original image of every set takes part (augmented copies do not).
"""

import dataclasses
import json
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from cache import fs
from retrain.audit import duplicates, labels, neighbours, outliers
from retrain.config import HParams
from retrain.data.images import TESTING, TRAINING
from retrain.features.sets import LabeledBottlenecks

AUDIT_JSON = "audit.json"


class Rows:
  """The vectors of a LabeledBottlenecks read as an [n, D] array: slices
  and index arrays read only those rows (from the memory-mapped index when
  the set is one)."""

  def __init__(self, labeled: LabeledBottlenecks):
    self.labeled = labeled
    self.shape = (len(labeled), labeled.x.shape[1])

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, items) -> np.ndarray:
    if isinstance(items, slice):
      items = np.arange(*items.indices(len(self)))
    return self.labeled.take(np.asarray(items, np.int64))


@dataclasses.dataclass(frozen=True)
class Image:
  path: str
  label: str
  set: str

  def to_json(self) -> Dict[str, str]:
    return dict(path=self.path, label=self.label, set=self.set)


@dataclasses.dataclass
class Audit:
  """What the audit found. groups: duplicate groups (JSON-ready dicts);
  label_errors, outliers: likewise, worst first."""
  images: int
  groups: List[Dict[str, object]]
  label_errors: List[Dict[str, object]]
  outliers: List[Dict[str, object]]
  thresholds: Dict[str, object]
  seconds: float
  test_accuracy_leak_free: Optional[float] = None
  test_images_leak_free: Optional[int] = None
  reused: bool = False  # Read from the cache folder (memo.py).
  # Photo-quality findings (quality.py): path, label, set, issue, score;
  # None: no photo statistics were at hand.
  quality: Optional[List[Dict[str, object]]] = None
  quality_thresholds: Dict[str, object] = dataclasses.field(
      default_factory=dict)

  @property
  def leaked_test_images(self) -> List[str]:
    """Test images with a duplicate in the training set."""
    return sorted({m["path"] for g in self.groups if g["leak"]
                   for m in g["images"] if m["set"] == TESTING})

  def counts(self) -> Dict[str, int]:
    return dict(
        exact_groups=sum(g["kind"] == "exact" for g in self.groups),
        near_groups=sum(g["kind"] == "near" for g in self.groups),
        groups_across_classes=sum(not g["same_class"] for g in self.groups),
        leaked_test_images=len(self.leaked_test_images),
        label_errors=len(self.label_errors), outliers=len(self.outliers),
        quality=len(self.quality or []))

  def quality_counts(self) -> Dict[str, int]:
    """Photo-quality findings by kind (every kind, 0 included)."""
    from retrain.audit import quality  # pylint: disable=g-import-not-at-top
    out = {k: 0 for k in quality.KINDS}
    for row in self.quality or []:
      out[row["issue"]] += 1
    return out

  def summary(self) -> str:
    """The log line."""
    c = self.counts()
    when = ("from the cache" if self.reused else
            f"in {self.seconds:.1f} s")
    line = (f"Audit of {self.images} images {when}: "
            f"{c['exact_groups']} exact and {c['near_groups']} near "
            f"duplicate groups ({c['groups_across_classes']} across "
            f"classes), {c['label_errors']} likely label errors, "
            f"{c['outliers']} outliers")
    if self.quality is not None:
      found = [f"{n} {k.replace('_', ' ')}"
               for k, n in self.quality_counts().items() if n]
      line += ("; photo quality: " + ", ".join(found) if found else
               "; no photo-quality findings")
    if c["leaked_test_images"]:
      line += (f"; test accuracy may be inflated by "
               f"{c['leaked_test_images']} leaked images (duplicates in "
               "training; --dedupe=group keeps each group in one set)")
    return line

  def with_test_accuracy(self, paths: Sequence[str], truth: np.ndarray,
                         predicted: np.ndarray) -> "Audit":
    """The audit with the accuracy on the test images that leak nothing."""
    leaked = set(self.leaked_test_images)
    keep = np.array([p not in leaked for p in paths], bool)
    accuracy = (float(np.mean(predicted[keep] == truth[keep]))
                if keep.any() else None)
    return dataclasses.replace(self, test_accuracy_leak_free=accuracy,
                               test_images_leak_free=int(keep.sum()))

  def to_json(self) -> Dict[str, object]:
    return dict(images=self.images, seconds=round(self.seconds, 3),
                counts=self.counts(), thresholds=self.thresholds,
                test_accuracy_leak_free=self.test_accuracy_leak_free,
                test_images_leak_free=self.test_images_leak_free,
                leaked_test_images=self.leaked_test_images,
                duplicate_groups=self.groups, label_errors=self.label_errors,
                outliers=self.outliers, quality=self.quality or [],
                quality_counts=self.quality_counts(),
                quality_thresholds=self.quality_thresholds)

  def write(self, folder: str) -> str:
    """Writes audit.json (atomically) into folder; returns its path."""
    path = fs.join(folder, AUDIT_JSON)
    fs.write_text(path, json.dumps(self.to_json(), indent=1) + "\n")
    return path


def originals(sets: Dict[str, LabeledBottlenecks], augmented_mark: str
              ) -> "tuple[LabeledBottlenecks, List[str]]":
  """All sets' original images (no augmented copy) as one view, and each
  one's set name."""
  parts, names = [], []
  for name, labeled in sets.items():
    keep = np.array([augmented_mark not in p for p in labeled.paths], bool)
    part = labeled.subset(np.flatnonzero(keep))
    parts.append(part)
    names += [name] * len(part)
  return LabeledBottlenecks.stack(parts), names


def run(data: LabeledBottlenecks, set_names: Sequence[str],
        label_names: Sequence[str], hparams: HParams) -> Audit:
  """Audits the images of `data` (see the package docstrings)."""
  start = time.monotonic()
  n = len(data)
  images = [Image(p, label_names[int(c)], s)
            for p, c, s in zip(data.paths, data.y, set_names)]
  rows = Rows(data)
  if n < 3:
    return Audit(n, [], [], [], {}, time.monotonic() - start)
  nb = neighbours.nearest(rows, seed=hparams.random_seed)
  found = duplicates.groups(data.paths, duplicates.near_pairs(nb))
  far, z = outliers.outliers(nb)
  probabilities = labels.out_of_fold(rows, data.y, len(label_names), hparams)
  issues = labels.confident_learning(probabilities, data.y)
  thresholds = dict(
      near_margin=duplicates.NEAR_MARGIN,
      exact_similarity=duplicates.EXACT_SIMILARITY,
      neighbours=neighbours.K, outlier_z=outliers.OUTLIER_Z,
      label_folds=labels.FOLDS,
      label_confidence={label_names[j]: round(float(t), 4)
                        for j, t in enumerate(issues.thresholds)})
  # Worst first: leaks, then copies across classes, then the closest.
  groups = sorted((_group_json(g, images) for g in found),
                  key=lambda g: (not g["leak"], g["same_class"],
                                 -g["similarity"]))
  return Audit(
      n, groups,
      [dict(images[i].to_json(), suggested=label_names[int(j)],
            confidence=round(float(probabilities[i, j]), 4),
            self_confidence=round(float(probabilities[i, data.y[i]]), 4),
            margin=round(float(m), 4))
       for i, j, m in zip(issues.index, issues.suggested, issues.margin)],
      [dict(images[i].to_json(), z=round(float(v), 2),
            similarity=round(float(nb.similarity[i].mean()), 4))
       for i, v in zip(far, z)],
      thresholds, time.monotonic() - start)


def _group_json(group: duplicates.Group, images: Sequence[Image]
                ) -> Dict[str, object]:
  members = [images[i] for i in group.members]
  sets = sorted({m.set for m in members})
  return dict(
      kind="exact" if group.exact else "near",
      similarity=round(group.similarity, 4),
      same_class=len({m.label for m in members}) == 1,
      classes=sorted({m.label for m in members}), sets=sets,
      leak=TRAINING in sets and TESTING in sets,
      images=[m.to_json() for m in members],
      identical=[[images[i].path for i in same] for same in group.identical])
