"""The packed index of one model's bottlenecks: one file instead of thousands.

  <bottleneck_dir>/<model tag>.index

A warm run reads this one file and stats each source image once, instead of
opening every sidecar; its vectors are memory-mapped, so a cache larger than
memory can be trained on. The sidecar files stay the source of truth: the
index is rebuilt from them (and from newly computed vectors) at the end of a
run that changed anything, and a missing, stale or damaged index only costs
speed.

Layout, little-endian:
  header: magic b"RTIX", version u16, 0 u16, rows u64, dim u32,
          model digest 16 bytes, keys length u64, CRC-32 of the
          fingerprints, keys and block CRCs u32, rows per block u32
          (64 bytes with padding)
  fingerprints: rows x (size i64, mtime_ns i64); (-1, -1) marks a row
          without a vector (an image that could not be used)
  vectors: rows x dim float32, at a 64-byte aligned offset
  keys: rows UTF-8 "<class folder>/<relative path>", NUL-separated
  block CRCs: one CRC-32 u32 per block of BLOCK_ROWS vectors

A damaged index is never trusted: the header, fingerprints and keys are
checked when it is opened, the vectors block by block (`damaged_rows`,
about 0.2 s per 500 MB of vectors) before a fill uses them; a damaged
block's rows are read again from their sidecars.
"""

import fcntl
import os
import struct
import tempfile
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from cache import fs as fs_mod
from cache.atomic import default_file_mode
from cache.format import model_digest

MAGIC = b"RTIX"
VERSION = 2  # 1 had no block CRCs: such an index is rebuilt.
BLOCK_ROWS = 1024
SUFFIX = ".index"
_HEADER = struct.Struct("<4sHHQI16sQII")
_HEADER_SIZE = 64
_NO_VECTOR = (-1, -1)


def index_path(root: str, tag: str) -> str:
  return fs_mod.join(root, tag + SUFFIX)


def _local_temp(prefix: str) -> Tuple[int, str]:
  """A new local temporary file (for a remote index): (fd, path)."""
  return tempfile.mkstemp(prefix=prefix, suffix=".tmp",
                          dir=fs_mod.local_copy_dir())


def _layout(rows: int, dim: int):
  """(fingerprints offset, vectors offset, keys offset) of a file."""
  fingerprints = _HEADER_SIZE
  vectors = -(-(fingerprints + 16 * rows) // 64) * 64
  return fingerprints, vectors, vectors + 4 * dim * rows


def _blocks(rows: int, block_rows: int = BLOCK_ROWS) -> int:
  return -(-rows // block_rows)


def _block_crcs(vectors: np.ndarray, block_rows: int = BLOCK_ROWS
                ) -> np.ndarray:
  """uint32 [blocks]: the CRC-32 of each block of rows of [rows, dim]."""
  return np.array([zlib.crc32(np.ascontiguousarray(
      vectors[start:start + block_rows]).data)
                   for start in range(0, len(vectors), block_rows)],
                  np.uint32)


class PackedIndex:
  """A read-only index file: keys, source fingerprints, memory-mapped vectors.

  vectors: float32 [rows, dim] np.memmap (valid where fingerprints are).
  """

  def __init__(self, path: str, keys: List[str], fingerprints: np.ndarray,
               vectors: np.ndarray, crcs: Optional[np.ndarray] = None,
               block_rows: int = BLOCK_ROWS):
    self.path = path
    self.keys = keys
    self.fingerprints = fingerprints  # int64 [rows, 2]
    self.vectors = vectors
    self.crcs = crcs  # uint32 [blocks]; None: written by this process.
    self.block_rows = block_rows
    self._row: Optional[Dict[str, int]] = None
    self._damaged: Optional[np.ndarray] = None

  def damaged_rows(self) -> np.ndarray:
    """bool [rows]: rows in a block of vectors whose CRC does not match
    (read once, then remembered)."""
    if self._damaged is None:
      damaged = np.zeros(len(self.keys), bool)
      if self.crcs is not None and len(self.keys):
        bad = np.flatnonzero(_block_crcs(self.vectors, self.block_rows) !=
                             self.crcs)
        for block in bad.tolist():
          damaged[block * self.block_rows:(block + 1) * self.block_rows] = True
      self._damaged = damaged
    return self._damaged

  @classmethod
  def open(cls, root: str, tag: str, dim: int) -> Optional["PackedIndex"]:
    """The index of `tag` under `root`, or None if missing or not valid.

    A remote index is copied to a local temporary file first, and mapped
    from there (the file is unlinked at once; the mapping keeps it).
    """
    path = index_path(root, tag)
    fs = fs_mod.for_path(root)
    if fs.local:
      return cls._open_file(path, path, tag, dim)
    fd, local = _local_temp(f".{tag}{SUFFIX}.")
    os.close(fd)
    try:
      try:
        fs.download(path, local)
      except OSError:
        return None
      return cls._open_file(local, path, tag, dim)
    finally:
      os.unlink(local)

  @classmethod
  def _open_file(cls, local: str, path: str, tag: str, dim: int
                 ) -> Optional["PackedIndex"]:
    """Reads the index file at local path `local` (known as `path`)."""
    try:
      with open(local, "rb") as f:
        header = f.read(_HEADER_SIZE)
        if len(header) < _HEADER.size:
          return None
        (magic, version, _, rows, file_dim, digest, keys_length, crc,
         block_rows) = _HEADER.unpack_from(header)
        if (magic != MAGIC or version != VERSION or file_dim != dim or
            digest != model_digest(tag) or block_rows <= 0):
          return None
        fp_at, vec_at, keys_at = _layout(rows, dim)
        crc_bytes_length = 4 * _blocks(rows, block_rows)
        if os.fstat(f.fileno()).st_size != (keys_at + keys_length +
                                            crc_bytes_length):
          return None
        fingerprint_bytes = f.read(16 * rows)
        f.seek(keys_at)
        key_bytes = f.read(keys_length)
        crc_bytes = f.read(crc_bytes_length)
    except OSError:
      return None
    if zlib.crc32(crc_bytes, zlib.crc32(key_bytes, zlib.crc32(
        fingerprint_bytes))) != crc:
      return None
    keys = key_bytes.decode("utf-8", "surrogateescape").split("\0")
    if rows == 0:
      keys = []
    if len(keys) != rows:
      return None
    fingerprints = np.frombuffer(fingerprint_bytes, "<i8").reshape(rows, 2)
    vectors = (np.memmap(local, "<f4", "r", vec_at, (rows, dim)) if rows
               else np.zeros((0, dim), np.float32))
    return cls(path, keys, fingerprints, vectors,
               np.frombuffer(crc_bytes, "<u4"), block_rows)

  def row(self, key: str, fingerprint: Sequence[int]) -> Optional[int]:
    """The row holding `key`'s vector for this source fingerprint, or None."""
    if self._row is None:
      self._row = {k: i for i, k in enumerate(self.keys)}
    i = self._row.get(key)
    if i is None or tuple(self.fingerprints[i]) != tuple(fingerprint):
      return None
    return i


class IndexWriter:
  """Writes a new index row by row (rows in any order), then renames it in.

  Vectors go straight to the file with positional writes, so memory does not
  grow with the number of images. Under a remote root the file is written
  locally and uploaded whole on commit.
  """

  def __init__(self, root: str, tag: str, keys: Sequence[str], dim: int):
    self.path = index_path(root, tag)
    self.tag = tag
    self.keys = list(keys)
    self.dim = dim
    self.fingerprints = np.full((len(self.keys), 2), _NO_VECTOR, np.int64)
    _, self._vectors_at, self._keys_at = _layout(len(self.keys), dim)
    self._fs = fs_mod.for_path(root)
    prefix = f".{tag}{SUFFIX}."
    if self._fs.local:
      os.makedirs(root, exist_ok=True)
      fd, self._tmp = tempfile.mkstemp(dir=root, prefix=prefix,
                                       suffix=".tmp")
    else:
      self._fs.makedirs(root)
      fd, self._tmp = _local_temp(prefix)
    # Locked while being written: the lock dies with its process, so an
    # unlocked temp file is the leftover of a killed run, and is removed.
    fcntl.flock(fd, fcntl.LOCK_EX)
    self._file = os.fdopen(fd, "r+b")
    _remove_abandoned(os.path.dirname(self._tmp), prefix, self._tmp)
    self._file.truncate(self._keys_at)

  def put(self, row: int, vector: np.ndarray, fingerprint: Sequence[int]
          ) -> None:
    data = np.ascontiguousarray(vector, "<f4").reshape(-1)
    if len(data) != self.dim:
      raise ValueError(f"vector of length {len(data)}, expected {self.dim}")
    try:
      os.pwrite(self._file.fileno(), data.tobytes(),
                self._vectors_at + 4 * self.dim * row)
    except OSError as e:  # Say which file (a full disk, say).
      raise OSError(e.errno, e.strerror, self.path) from e
    self.fingerprints[row] = fingerprint

  def commit(self) -> PackedIndex:
    """Completes the file and atomically replaces the previous index."""
    fingerprint_bytes = self.fingerprints.astype("<i8").tobytes()
    key_bytes = "\0".join(self.keys).encode("utf-8", "surrogateescape")
    f = self._file
    try:
      rows = len(self.keys)
      f.flush()
      written = (np.memmap(self._tmp, "<f4", "r", self._vectors_at,
                           (rows, self.dim)) if rows
                 else np.zeros((0, self.dim), np.float32))
      crc_bytes = _block_crcs(written).astype("<u4").tobytes()
      del written
      crc = zlib.crc32(crc_bytes, zlib.crc32(key_bytes, zlib.crc32(
          fingerprint_bytes)))
      header = _HEADER.pack(MAGIC, VERSION, 0, rows, self.dim,
                            model_digest(self.tag), len(key_bytes), crc,
                            BLOCK_ROWS)
      f.seek(0)
      f.write(header.ljust(_HEADER_SIZE, b"\0"))
      f.write(fingerprint_bytes)
      f.seek(self._keys_at)
      f.write(key_bytes)
      f.write(crc_bytes)
      f.close()
      os.chmod(self._tmp, default_file_mode())
      # Mapped before the rename: a concurrent run replacing the index
      # afterwards cannot change what this one reads.
      vectors = (np.memmap(self._tmp, "<f4", "r", self._vectors_at,
                           (rows, self.dim)) if rows
                 else np.zeros((0, self.dim), np.float32))
      if self._fs.local:
        os.replace(self._tmp, self.path)
      else:
        self._fs.upload(self._tmp, self.path)
        os.unlink(self._tmp)
    except BaseException as e:
      self.abort()
      if isinstance(e, OSError) and not e.filename:  # Say which file.
        raise OSError(e.errno, e.strerror, self.path) from e
      raise
    return PackedIndex(self.path, self.keys, self.fingerprints, vectors)

  def abort(self) -> None:
    """Drops the unfinished file."""
    try:
      self._file.close()
    except OSError:
      pass
    try:
      os.unlink(self._tmp)
    except OSError:
      pass


def _remove_abandoned(root: str, prefix: str, own: str) -> None:
  """Deletes unfinished index files of killed runs (not of live ones)."""
  for name in os.listdir(root):
    path = os.path.join(root, name)
    if not (name.startswith(prefix) and name.endswith(".tmp")) or (
        path == own):
      continue
    try:
      fd = os.open(path, os.O_RDONLY)
    except OSError:
      continue
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      os.unlink(path)
    except OSError:
      pass  # Locked: another run is writing it.
    finally:
      os.close(fd)

