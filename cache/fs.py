"""Where cache files live: the local disk, or any filesystem registered here.

Local paths use the operating system directly (memory-mapped index, flock,
rename). A path with a scheme ("gs://bucket/x", "s3://...", "ram://...")
goes to the filesystem registered for it: this package has no TensorFlow,
so `retrain.features.storage` registers one over `tf.io.gfile` that serves every
scheme TensorFlow knows.

Semantics every filesystem gives the cache:
  write_atomic: a reader sees the old file or the complete new one, never a
    partial one (local: temp file + rename in the same folder; object
    stores: an object appears whole when its upload completes).
  stat: (size in bytes, modification time in ns), the source fingerprint.
"""

import collections
import concurrent.futures
import os
import shutil
from typing import (Callable, Deque, Iterator, List, Optional, Sequence,
                    Tuple, TypeVar)

from cache import atomic


class FileSystem:
  """The file operations the cache and the tool need. Local by default."""

  local = True

  def read_bytes(self, path: str) -> bytes:
    with open(path, "rb") as f:
      return f.read()

  def write_atomic(self, path: str, data: bytes, fsync: bool = False) -> None:
    atomic.atomic_write_bytes(path, data, fsync=fsync)

  def stat(self, path: str) -> Tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns

  def exists(self, path: str) -> bool:
    return os.path.exists(path)

  def isdir(self, path: str) -> bool:
    return os.path.isdir(path)

  def listdir(self, path: str) -> List[str]:
    return os.listdir(path)

  def makedirs(self, path: str) -> None:
    os.makedirs(path, exist_ok=True)

  def remove(self, path: str) -> None:
    os.remove(path)

  def remove_tree(self, path: str) -> None:
    """Removes a folder and everything in it; nothing if it is absent."""
    shutil.rmtree(path, ignore_errors=True)

  def walk(self, top: str) -> Iterator[Tuple[str, List[str], List[str]]]:
    """os.walk: (folder, sub-folders, files); sub-folders may be pruned."""
    return os.walk(top)

  def download(self, path: str, local_path: str) -> None:
    """Copies a file of this filesystem to a local file."""
    raise NotImplementedError

  def upload(self, local_path: str, path: str) -> None:
    """Copies a local file here, replacing `path` whole (see write_atomic)."""
    raise NotImplementedError


LOCAL = FileSystem()

# (scheme test, filesystem), consulted newest first.
_REGISTERED: List[Tuple[Callable[[str], bool], FileSystem]] = []


def has_scheme(path: str) -> bool:
  """True for "scheme://..." paths (not local)."""
  head, sep, _ = path.partition("://")
  return bool(sep) and head.replace("+", "").replace("-", "").isalnum()


def register(handles: Callable[[str], bool], fs: FileSystem) -> None:
  """Serves paths for which handles(path) is true with `fs`."""
  _REGISTERED.insert(0, (handles, fs))


class StorageError(OSError):
  """A filesystem call on `path` failed; str() is one line naming it."""

  def __init__(self, path: str, why: str):
    super().__init__(f"{path}: {why}")
    self.path = path
    self.strerror = why


class NoFileSystemError(StorageError):
  """A path with a scheme that no registered filesystem serves."""


def for_path(path: str) -> FileSystem:
  """The filesystem of `path`: local unless it has a scheme."""
  if not has_scheme(path):
    return LOCAL
  for handles, fs in _REGISTERED:
    if handles(path):
      return fs
  raise NoFileSystemError(path, "no filesystem serves this scheme here")


def join(folder: str, *parts: str) -> str:
  """os.path.join for local folders; '/'-joined for URLs."""
  if has_scheme(folder):
    return "/".join([folder.rstrip("/")] + [p.strip("/") for p in parts])
  return os.path.join(folder, *parts)


def dirname(path: str) -> str:
  if has_scheme(path):
    head, _, _ = path.rstrip("/").rpartition("/")
    return head
  return os.path.dirname(path)


T = TypeVar("T")
R = TypeVar("R")

# Requests in flight at once when many small files are stat'ed or read on a
# remote filesystem: each waits on the network (tf.io.gfile releases the
# GIL), so one at a time would make 100 000 images 100 000 round trips.
REMOTE_CONCURRENCY = 64


def map_paths(fn: Callable[[T], R], items: Sequence[T], remote: bool
              ) -> Iterator[R]:
  """fn over items, in order: if `remote` (fn's calls are network requests),
  REMOTE_CONCURRENCY calls at a time on threads, a bounded number ahead;
  else one by one. fn should return its errors, not raise them."""
  if not remote or len(items) < 2:
    yield from map(fn, items)
    return
  with concurrent.futures.ThreadPoolExecutor(
      min(REMOTE_CONCURRENCY, len(items)),
      thread_name_prefix="retrain-fs") as pool:
    pending: Deque[concurrent.futures.Future] = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= 4 * REMOTE_CONCURRENCY:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def local_copy_dir() -> Optional[str]:
  """Where downloaded cache files (remote indexes) are kept while mapped."""
  return os.environ.get("RETRAIN_LOCAL_TMP") or None


# The operations on whatever filesystem serves the path.

def read_bytes(path: str) -> bytes:
  return for_path(path).read_bytes(path)


def write_atomic(path: str, data: bytes, fsync: bool = False) -> None:
  """The file at `path` becomes `data` whole, or stays as it was."""
  for_path(path).write_atomic(path, data, fsync=fsync)


def write_text(path: str, text: str, fsync: bool = False) -> None:
  write_atomic(path, text.encode("utf-8"), fsync=fsync)


def exists(path: str) -> bool:
  return for_path(path).exists(path)


def isdir(path: str) -> bool:
  return for_path(path).isdir(path)


def isfile(path: str) -> bool:
  store = for_path(path)
  return store.exists(path) and not store.isdir(path)


def listdir(path: str) -> List[str]:
  return for_path(path).listdir(path)


def makedirs(path: str) -> None:
  for_path(path).makedirs(path)


def abspath(path: str) -> str:
  """os.path.abspath for local paths; URLs as they are."""
  return path if has_scheme(path) else os.path.abspath(path)
