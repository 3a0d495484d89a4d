"""Reading bottlenecks from the cache and computing the missing ones."""

import dataclasses
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from cache import format as fmt
from cache import fs as fs_mod
from cache import index as index_mod
from cache.naming import bottleneck_path


class SourceFingerprint(NamedTuple):
  """What identifies the contents of a source image without reading it."""
  size: int
  mtime_ns: int

  @classmethod
  def of(cls, path: str) -> "SourceFingerprint":
    """Raises OSError when the file cannot be stat'ed."""
    return cls(*fs_mod.for_path(path).stat(path))


def _fingerprint(ref: "ImageRef"
                 ) -> Tuple[Optional[SourceFingerprint], Optional[OSError]]:
  try:
    return SourceFingerprint.of(ref.path), None
  except OSError as e:
    return None, e


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

  vectors: float32 [n, D], memory-mapped from the cache's packed index;
  vectors[i] is valid only where ok[i]; failures lists (image path, reason)
  for the others.
  """
  vectors: np.ndarray
  ok: np.ndarray
  failures: List[Tuple[str, str]]
  from_cache: int
  computed: int


def index_key(ref: ImageRef) -> str:
  return f"{ref.class_dir}/{ref.relpath}"


class BottleneckCache:
  """The sidecar files (and the packed index) of one model under one folder."""

  def __init__(self, root: str, tag: str):
    self.root = root
    self.tag = tag
    self.fs = fs_mod.for_path(root)

  def path_for(self, ref: ImageRef) -> str:
    return bottleneck_path(self.root, ref.class_dir, ref.relpath, self.tag)

  def load(self, ref: ImageRef,
           fingerprint: SourceFingerprint) -> Optional[np.ndarray]:
    """The cached vector, or None if it is missing, stale or unreadable."""
    try:
      data = self.fs.read_bytes(self.path_for(ref))
      return fmt.decode(data, self.tag, fingerprint)
    except (OSError, fmt.CacheFormatError):
      return None

  def store(self, ref: ImageRef, vector: np.ndarray,
            fingerprint: SourceFingerprint) -> None:
    self.fs.write_atomic(self.path_for(ref),
                         fmt.encode(vector, self.tag, fingerprint))

  def lookup(self, refs: Sequence[ImageRef], dim: int
             ) -> Tuple[np.ndarray, np.ndarray]:
    """(float32 [n, dim] vectors, bool [n] found) of the cached ones of
    `refs`, from the packed index or their sidecars; reads only: nothing
    is computed or written (an image changed since it was cached, or
    missing, is not found)."""
    n = len(refs)
    vectors = np.zeros((n, dim), np.float32)
    found = np.zeros(n, bool)
    old = index_mod.PackedIndex.open(self.root, self.tag, dim)
    damaged = old.damaged_rows() if old is not None else None
    remote = bool(refs) and not fs_mod.for_path(refs[0].path).local
    for i, (fingerprint, error) in enumerate(fs_mod.map_paths(
        _fingerprint, refs, remote)):
      if error is not None:
        continue
      row = old.row(index_key(refs[i]), fingerprint) if old else None
      if row is not None and not damaged[row]:
        vectors[i] = old.vectors[row]
        found[i] = True
        continue
      vector = self.load(refs[i], fingerprint)
      if vector is not None and len(vector) == dim:
        vectors[i] = vector
        found[i] = True
    return vectors, found

  def fill(self, refs: Sequence[ImageRef], compute: ComputeFn, dim: int,
           progress: Optional[Callable[[int, int], None]] = None,
           compute_stores: bool = False) -> FillResult:
    """The bottlenecks of `refs`: read from the cache, the rest computed.

    Each source image is stat'ed once (on a remote filesystem, like the
    sidecar reads, many requests at a time: fs.map_paths). Vectors come from the packed index
    when its fingerprint matches, else from the image's sidecar file, else
    they are computed and written to a new sidecar as they arrive. An image
    that cannot be read or decoded is reported in `failures` and gets no
    file. Unless every vector came from the index in the same order, a new
    index is written (vectors streamed to disk, so memory stays flat).

    Args:
      refs: the images.
      compute: computes vectors for a list of ImageRefs (see ComputeFn).
      dim: the bottleneck length D.
      progress: called as progress(done, total) while computing.
      compute_stores: `compute` has written each vector's sidecar itself
        (a Beam pipeline); fill only indexes them.
    """
    n = len(refs)
    keys = [index_key(r) for r in refs]
    old = index_mod.PackedIndex.open(self.root, self.tag, dim)
    # Rows in a block whose CRC fails are read from their sidecars instead.
    damaged = old.damaged_rows() if old is not None else None
    fingerprints: List[Optional[SourceFingerprint]] = [None] * n
    old_rows = np.full(n, -1, np.int64)
    failures: List[Tuple[str, str]] = []
    # On an object store each stat and sidecar read is a request: many fly
    # at once (fs.map_paths).
    images_remote = bool(refs) and not fs_mod.for_path(refs[0].path).local
    for i, (fingerprint, error) in enumerate(fs_mod.map_paths(
        _fingerprint, refs, images_remote)):
      if error is not None:
        failures.append((refs[i].path, f"cannot read it ({error.strerror})"))
        continue
      fingerprints[i] = fingerprint
      if old is not None:
        row = old.row(keys[i], fingerprints[i])
        old_rows[i] = -1 if row is None or damaged[row] else row
    usable = np.array([f is not None for f in fingerprints], bool)
    if (old is not None and old.keys == keys and
        np.array_equal(old_rows[usable], np.flatnonzero(usable))):
      return FillResult(old.vectors, usable, sorted(failures),
                        int(usable.sum()), 0)

    writer = index_mod.IndexWriter(self.root, self.tag, keys, dim)
    try:
      ok = np.zeros(n, bool)
      missing = []
      sidecars = fs_mod.map_paths(
          lambda i: self.load(refs[i], fingerprints[i]),
          np.flatnonzero(usable & (old_rows < 0)).tolist(), not self.fs.local)
      for i in np.flatnonzero(usable):
        if old_rows[i] >= 0:
          vector = np.array(old.vectors[old_rows[i]])
        else:
          vector = next(sidecars)
        if vector is None:
          missing.append(i)
        elif len(vector) != dim:
          raise ValueError(f"bottleneck of {refs[i].path} has length "
                           f"{len(vector)}, expected {dim}")
        else:
          writer.put(i, vector, fingerprints[i])
          ok[i] = True
      done = 0
      for j, vector, error in compute([refs[i] for i in missing]):
        i = missing[j]
        done += 1
        if vector is None:
          failures.append((refs[i].path, error or "unknown error"))
        else:
          vector = np.asarray(vector, np.float32)
          if not compute_stores:
            self.store(refs[i], vector, fingerprints[i])
          writer.put(i, vector, fingerprints[i])
          ok[i] = True
        if progress:
          progress(done, len(missing))
      index = writer.commit()
    except BaseException:
      writer.abort()
      raise
    failures.sort()
    computed = int(ok[missing].sum()) if missing else 0
    return FillResult(index.vectors, ok, failures, n - len(missing) -
                      int((~usable).sum()), computed)
