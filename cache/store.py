"""Reading bottlenecks from the cache and computing the missing ones."""

import dataclasses
import os
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from cache import format as fmt
from cache.atomic import atomic_write_bytes
from cache.naming import bottleneck_path


class SourceFingerprint(NamedTuple):
  """What identifies the contents of a source image without reading it."""
  size: int
  mtime_ns: int

  @classmethod
  def of(cls, path: str) -> "SourceFingerprint":
    st = os.stat(path)
    return cls(st.st_size, st.st_mtime_ns)


class ImageRef(NamedTuple):
  """One image: its file, and its place in the cache's class-mirroring tree."""
  path: str
  class_dir: str
  relpath: str


# compute(refs) yields (index into refs, vector or None, error or None), in
# any order, once per image.
ComputeFn = Callable[[Sequence["ImageRef"]],
                     Iterator[Tuple[int, Optional[np.ndarray], Optional[str]]]]


@dataclasses.dataclass
class FillResult:
  """The bottlenecks of a list of images, aligned with it.

  vectors[i] is valid only where ok[i]; failures lists (image path, reason)
  for the others.
  """
  vectors: np.ndarray
  ok: np.ndarray
  failures: List[Tuple[str, str]]
  from_cache: int
  computed: int


class BottleneckCache:
  """The sidecar files of one model under one folder."""

  def __init__(self, root: str, tag: str):
    self.root = root
    self.tag = tag

  def path_for(self, ref: ImageRef) -> str:
    return bottleneck_path(self.root, ref.class_dir, ref.relpath, self.tag)

  def load(self, ref: ImageRef,
           fingerprint: SourceFingerprint) -> Optional[np.ndarray]:
    """The cached vector, or None if it is missing, stale or unreadable."""
    try:
      with open(self.path_for(ref), "rb") as f:
        data = f.read()
      return fmt.decode(data, self.tag, fingerprint)
    except (OSError, fmt.CacheFormatError):
      return None

  def store(self, ref: ImageRef, vector: np.ndarray,
            fingerprint: SourceFingerprint) -> None:
    atomic_write_bytes(self.path_for(ref),
                       fmt.encode(vector, self.tag, fingerprint))

  def fill(self, refs: Sequence[ImageRef], compute: ComputeFn,
           progress: Optional[Callable[[int, int], None]] = None
           ) -> FillResult:
    """The bottlenecks of `refs`: read from the cache, the rest computed.

    Computed vectors are written to the cache as they arrive. An image that
    cannot be read or decoded is reported in `failures` and gets no file.

    Args:
      refs: the images.
      compute: computes vectors for a list of ImageRefs (see ComputeFn).
      progress: called as progress(done, total) while computing.
    """
    n = len(refs)
    vectors: List[Optional[np.ndarray]] = [None] * n
    fingerprints: List[Optional[SourceFingerprint]] = [None] * n
    failures: List[Tuple[str, str]] = []
    missing = []
    for i, ref in enumerate(refs):
      try:
        fingerprints[i] = SourceFingerprint.of(ref.path)
      except OSError as e:
        failures.append((ref.path, f"cannot read it ({e.strerror})"))
        continue
      vectors[i] = self.load(ref, fingerprints[i])
      if vectors[i] is None:
        missing.append(i)
    done = 0
    for j, vector, error in compute([refs[i] for i in missing]):
      i = missing[j]
      done += 1
      if vector is None:
        failures.append((refs[i].path, error or "unknown error"))
      else:
        vectors[i] = np.asarray(vector, np.float32)
        self.store(refs[i], vectors[i], fingerprints[i])
      if progress:
        progress(done, len(missing))
    ok = np.array([v is not None for v in vectors], dtype=bool)
    dim = next((len(v) for v in vectors if v is not None), 0)
    out = np.zeros((n, dim), np.float32)
    for i, v in enumerate(vectors):
      if v is not None:
        if len(v) != dim:
          raise ValueError(f"bottleneck of {refs[i].path} has length {len(v)}"
                           f", expected {dim}")
        out[i] = v
    failures.sort()
    return FillResult(out, ok, failures, n - len(missing),
                      len(missing) - sum(1 for i in missing if not ok[i]))
