"""Paths on any filesystem TensorFlow knows: gs://, s3://, hdfs://, ram://.

Importing this module serves every "scheme://" path of the cache and the
tool through `tf.io.gfile` (cache.fs has no TensorFlow of its own); local
paths keep the operating system's fast paths. `user_error` turns what a
storage service says into one line that names the path.

Per-scheme semantics of a cache or output file being "complete or absent":
written under a hidden temporary name in the same folder, then renamed over
the destination (gfile.rename with overwrite). On ram:// and HDFS that is a
rename; on gs:// and s3:// a rename is a server-side copy then a delete, and
an object becomes visible only whole, so a reader never sees part of one. A
killed writer can leave a hidden ".*.tmp" object behind, never a partial
file under the real name.
"""

import posixpath
import uuid
from typing import Iterator, List, Tuple

import tensorflow as tf

from cache import fs
from retrain.errors import UserError

gfile = tf.io.gfile


def _plain(name: str) -> str:
  return name.rstrip("/")  # Object stores list folders as "name/".


class GFileFileSystem(fs.FileSystem):
  """cache.fs.FileSystem over tf.io.gfile."""

  local = False

  def read_bytes(self, path: str) -> bytes:
    with _os_errors(path):
      with gfile.GFile(path, "rb") as f:
        return f.read()

  def write_atomic(self, path: str, data: bytes, fsync: bool = False) -> None:
    del fsync  # A completed upload is durable.
    folder, name = posixpath.split(path)
    tmp = posixpath.join(folder, f".{name[:100]}.{uuid.uuid4().hex}.tmp")
    with _os_errors(path):
      gfile.makedirs(folder)
      try:
        with gfile.GFile(tmp, "wb") as f:
          f.write(data)
        gfile.rename(tmp, path, overwrite=True)
      except BaseException:
        try:
          gfile.remove(tmp)
        except tf.errors.OpError:
          pass
        raise

  def stat(self, path: str) -> Tuple[int, int]:
    with _os_errors(path):
      st = gfile.stat(path)
    return st.length, st.mtime_nsec

  def exists(self, path: str) -> bool:
    with _os_errors(path):
      return gfile.exists(path)

  def isdir(self, path: str) -> bool:
    with _os_errors(path):
      return gfile.isdir(path)

  def listdir(self, path: str) -> List[str]:
    with _os_errors(path):
      return sorted({_plain(n) for n in gfile.listdir(path)})

  def makedirs(self, path: str) -> None:
    with _os_errors(path):
      gfile.makedirs(path)

  def remove(self, path: str) -> None:
    with _os_errors(path):
      gfile.remove(path)

  def remove_tree(self, path: str) -> None:
    with _os_errors(path):
      if gfile.exists(path):
        gfile.rmtree(path)

  def walk(self, top: str) -> Iterator[Tuple[str, List[str], List[str]]]:
    """Top-down, so that callers can prune sub-folders as os.walk's. Object
    stores mark folders with a trailing "/" and a name with an image
    extension is taken for a file, so that listing a bucket does not cost a
    request per file; other names are asked about."""
    from retrain.data.images import is_image_name  # pylint: disable=g-import-not-at-top
    folders = [top.rstrip("/")]
    while folders:
      folder = folders.pop(0)
      dirs, files = [], []
      with _os_errors(folder):
        names = sorted(gfile.listdir(folder))
      for name in names:
        if name.endswith("/"):
          dirs.append(name.rstrip("/"))
        elif is_image_name(name) or not self.isdir(
            posixpath.join(folder, name)):
          files.append(name)
        else:
          dirs.append(name)
      yield folder, dirs, files
      folders[:0] = [posixpath.join(folder, d) for d in dirs]

  def download(self, path: str, local_path: str) -> None:
    with _os_errors(path):
      gfile.copy(path, local_path, overwrite=True)

  def upload(self, local_path: str, path: str) -> None:
    folder, name = posixpath.split(path)
    tmp = posixpath.join(folder, f".{name[:100]}.{uuid.uuid4().hex}.tmp")
    with _os_errors(path):
      gfile.makedirs(folder)
      gfile.copy(local_path, tmp, overwrite=True)
      gfile.rename(tmp, path, overwrite=True)


class _os_errors:  # pylint: disable=invalid-name
  """Raises TensorFlow's filesystem errors as OSError (with the TF error as
  the cause), as the cache expects of every filesystem."""

  def __init__(self, path: str):
    self.path = path

  def __enter__(self):
    return self

  def __exit__(self, kind, error, tb):
    if isinstance(error, tf.errors.OpError):
      raise RemoteError(self.path, error) from error
    return False


class RemoteError(fs.StorageError):
  """A TensorFlow filesystem error on `path`, with a one-line reason."""

  def __init__(self, path: str, error: tf.errors.OpError):
    super().__init__(path, explain(path, error, with_path=False))


def explain(path: str, error: BaseException, with_path: bool = True) -> str:
  """One line: what went wrong with `path`, and the likely cause."""
  message = str(getattr(error, "message", "") or error)
  lowered = message.lower()
  scheme = path.partition("://")[0]
  if "could not resolve host" in lowered or "couldn't resolve" in lowered or (
      "failed to connect" in lowered or "timed out" in lowered):
    why = (f"cannot reach the {scheme}:// service (no network, or a proxy "
           "in the way)")
  elif "unimplemented" in lowered or "file system scheme" in lowered:
    why = (f"this TensorFlow has no {scheme}:// filesystem (for s3:// and "
           "hdfs:// install tensorflow-io)")
  elif ("permission" in lowered or "credentials" in lowered or
        "unauthenticated" in lowered or "403" in message or
        "401" in message):
    why = ("access denied: check the credentials (gcloud auth "
           "application-default login, or GOOGLE_APPLICATION_CREDENTIALS) "
           "and the bucket's permissions")
  elif isinstance(error, tf.errors.NotFoundError) or "not found" in lowered:
    why = ("not found: check the path" + (
        ", that the bucket exists, and that this machine can reach the "
        "service and has credentials (offline, object stores say 'not "
        "found' too)" if scheme in ("gs", "s3") else ""))
  else:
    why = message.strip().splitlines()[0] if message.strip() else type(
        error).__name__
  return f"{path}: {why}" if with_path else why


def user_error(flag: str, path: str, error: BaseException) -> UserError:
  """A UserError naming the flag and the path, for a failed storage call."""
  if isinstance(error, fs.StorageError):
    return UserError(f"--{flag}={path}: {error.strerror}")
  if isinstance(error, OSError) and not fs.has_scheme(path):
    return UserError(f"--{flag}={path}: {error.strerror or error}")
  return UserError(f"--{flag}={explain(path, error)}")


fs.register(fs.has_scheme, GFileFileSystem())
