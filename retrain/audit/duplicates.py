"""Exact and near duplicates among the images, from their neighbours.

A pair is a near duplicate when its similarity s stands out from both
images' neighbourhoods: (s - b) / (1 - b) >= NEAR_MARGIN, where b is the
larger of the two images' K-th neighbour similarity (neighbours.K). A plain
threshold on s cannot work across models and classes: different photos of
dandelions on black are as similar as a photo and its resized copy in
another class. Calibrated on the planted pairs of tests/planted.py
(re-encoded, resized to 40-70 %, cropped to 80-90 %, flipped) against the
dev flowers' own pairs with MobileNet v1 0.25/128 and 0.75/224 and
EfficientNet-Lite0: precision 0.98-1.0 and recall 0.88-1.0 of the pairs
(README, "Audit"); on the dev flowers alone it finds their one real
near-duplicate (two shots of a sunflower) with MobileNet, and with
Lite0 also one look-alike pair just above the margin (0.604). Pairs similar enough to be the same file
(EXACT_SIMILARITY) are checked byte for byte (SHA-256 of the files, only for
those candidates). Pairs join into groups (connected components).

Pure numpy; no TensorFlow.
"""

import concurrent.futures
import dataclasses
import hashlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from cache import fs
from retrain.audit.neighbours import Neighbours

NEAR_MARGIN = 0.6
EXACT_SIMILARITY = 0.9999


@dataclasses.dataclass(frozen=True)
class Group:
  """Images that are copies of one another: members (indices, sorted),
  identical: lists of members with the same bytes (each of 2 or more),
  similarity: the lowest similarity of the pairs that joined them."""
  members: Tuple[int, ...]
  identical: Tuple[Tuple[int, ...], ...]
  similarity: float

  @property
  def exact(self) -> bool:
    """Every member has the same bytes."""
    return len(self.identical) == 1 and len(self.identical[0]) == len(
        self.members)


def near_pairs(nb: Neighbours) -> List[Tuple[int, int, float]]:
  """(i, j, similarity), i < j, of the pairs that stand out (see module
  docstring), or are similar enough to be the same file."""
  base = nb.similarity[:, -1].astype(np.float64)  # Each image's K-th.
  rows = np.repeat(np.arange(len(nb.index)), nb.index.shape[1])
  cols = nb.index.reshape(-1)
  sims = nb.similarity.reshape(-1).astype(np.float64)
  b = np.maximum(base[rows], base[cols])
  margin = (sims - b) / np.maximum(1.0 - b, 1e-9)
  keep = (margin >= NEAR_MARGIN) | (sims >= EXACT_SIMILARITY)
  out = {}
  for i, j, s in zip(rows[keep], cols[keep], sims[keep]):
    key = (int(min(i, j)), int(max(i, j)))
    out[key] = max(out.get(key, -1.0), float(s))
  return [(i, j, s) for (i, j), s in sorted(out.items())]


def _digest(path: str) -> Optional[str]:
  try:
    return hashlib.sha256(fs.read_bytes(path)).hexdigest()
  except (OSError, fs.StorageError):
    return None


def file_digests(paths: Sequence[str], wanted: Sequence[int]
                 ) -> Dict[int, str]:
  """SHA-256 of the files at the `wanted` indices of paths (those that
  can be read now), a few at a time."""
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    digests = pool.map(_digest, [paths[i] for i in wanted])
    return {i: d for i, d in zip(wanted, digests) if d is not None}


def groups(paths: Sequence[str], pairs: Sequence[Tuple[int, int, float]]
           ) -> List[Group]:
  """The duplicate groups joined by `pairs`, largest similarity first;
  byte-identical members found among pairs that are candidates for it."""
  parent: Dict[int, int] = {}

  def root(i: int) -> int:
    parent.setdefault(i, i)
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  lowest: Dict[int, float] = {}
  for i, j, s in pairs:
    a, b = root(i), root(j)
    if a != b:
      parent[b] = a
  for i, j, s in pairs:
    r = root(i)
    lowest[r] = min(lowest.get(r, 1.0), s)
  candidates = sorted({k for i, j, s in pairs if s >= EXACT_SIMILARITY
                       for k in (i, j)})
  digests = file_digests(paths, candidates)
  members: Dict[int, List[int]] = {}
  for i in parent:
    members.setdefault(root(i), []).append(i)
  out = []
  for r, items in members.items():
    items.sort()
    by_digest: Dict[str, List[int]] = {}
    for i in items:
      if i in digests:
        by_digest.setdefault(digests[i], []).append(i)
    identical = tuple(sorted(tuple(v) for v in by_digest.values()
                             if len(v) > 1))
    out.append(Group(tuple(items), identical, lowest[r]))
  out.sort(key=lambda g: (-g.similarity, g.members))
  return out
