"""Labeled bottleneck sets: the vectors of one split set, in memory or as
views over memory-mapped cache files (what extraction hands to training).

Pure numpy; no TensorFlow.
"""

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import numpy as np


class StackedRows:
  """Chosen rows of several [*, D] arrays read as one [n, D] array.

  parts: (array, rows) pairs; item i of the whole is array[rows[j]] of the
  part that holds it. Only integer-array indexing is supported, and only
  the rows asked for are read: the arrays may be memory-mapped cache files
  (the original bottlenecks and each augmented copy) that never enter
  memory whole.
  """

  def __init__(self, parts: Sequence[Tuple[np.ndarray, np.ndarray]]):
    self.parts = list(parts)
    self.offsets = np.cumsum([0] + [len(rows) for _, rows in self.parts])
    self.shape = (int(self.offsets[-1]), self.parts[0][0].shape[1])
    self.dtype = np.dtype(np.float32)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, items) -> np.ndarray:
    items = np.asarray(items, np.int64)
    out = np.empty((len(items), self.shape[1]), np.float32)
    part = np.searchsorted(self.offsets, items, side="right") - 1
    for k, (x, rows) in enumerate(self.parts):
      where = np.flatnonzero(part == k)
      if len(where):
        out[where] = x[rows[items[where] - self.offsets[k]]]
    return out


@dataclasses.dataclass(frozen=True)
class LabeledBottlenecks:
  """Bottlenecks of one set: y: int64 [n]; paths: n files.

  Item i's vector is x[i], or x[rows[i]] when `rows` is given (x is then a
  larger, usually memory-mapped, array or a StackedRows of several, read
  only where needed).
  """
  x: np.ndarray
  y: np.ndarray
  paths: Sequence[str]
  rows: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return len(self.y)

  def in_memory(self) -> "LabeledBottlenecks":
    """The same set with its vectors as one in-memory array."""
    if self.rows is None:
      return self
    return LabeledBottlenecks(self.take(np.arange(len(self))), self.y,
                              self.paths)

  def subset(self, indices: np.ndarray) -> "LabeledBottlenecks":
    """The given items, as a view: no vector is read or copied."""
    indices = np.asarray(indices, np.int64)
    rows = indices if self.rows is None else self.rows[indices]
    return LabeledBottlenecks(self.x, self.y[indices],
                              [self.paths[i] for i in indices], rows)

  @staticmethod
  def stack(sets: Sequence["LabeledBottlenecks"]) -> "LabeledBottlenecks":
    """The items of all sets, in order, as a view over their vectors (see
    StackedRows): nothing is read until `take` or `in_memory`."""
    parts = [(s.x, np.arange(len(s)) if s.rows is None else s.rows)
             for s in sets]
    return LabeledBottlenecks(
        StackedRows(parts), np.concatenate([s.y for s in sets]),
        [p for s in sets for p in s.paths],
        np.arange(sum(len(s) for s in sets)))

  def take(self, indices: np.ndarray) -> np.ndarray:
    """float32 [len(indices), D]: the vectors of the given items."""
    if self.rows is None:
      return self.x[indices]
    rows = self.rows[indices]
    order = np.argsort(rows, kind="stable")  # Read the file front to back.
    out = np.empty((len(rows), self.x.shape[1]), np.float32)
    out[order] = self.x[rows[order]]
    return out


def by_paths(sets: Dict[str, LabeledBottlenecks],
             named: Dict[str, Sequence[str]]
             ) -> Dict[str, LabeledBottlenecks]:
  """name -> the items of any of `sets` with those paths, in that order, as
  views (nothing is read); the path lookup is built once for all names."""
  if not named:
    return {}
  every = LabeledBottlenecks.stack(list(sets.values()))
  row = {p: i for i, p in enumerate(every.paths)}
  return {name: every.subset(np.array([row[p] for p in paths], np.int64))
          for name, paths in named.items()}
