"""Atomic file writes: write to a temporary name in the same folder, then rename.

A reader (or a later run) sees either the old file or the complete new one,
never a partial file, even if the writer is killed. Two writers racing on one
path both succeed and the last rename wins.
"""

import os
import tempfile


def atomic_write_bytes(path: str, data: bytes, fsync: bool = False) -> None:
  """Writes `data` to `path` atomically, creating the folder if needed.

  Args:
    path: the destination file.
    data: the complete file contents.
    fsync: also flush to stable storage before the rename (survives a power
      cut, not only a killed process; slower).
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder,
                             prefix="." + os.path.basename(path)[:100] + ".",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      if fsync:
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, default_file_mode())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise


def atomic_write_text(path: str, text: str, fsync: bool = False) -> None:
  """`atomic_write_bytes` for UTF-8 text."""
  atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def default_file_mode() -> int:
  """rw-r--r-- less the process umask: what open() would have created."""
  mask = os.umask(0)
  os.umask(mask)
  return 0o644 & ~mask
