"""Atomic file writes: write to a temporary name in the same folder, then rename.

A reader (or a later run) sees either the old file or the complete new one,
never a partial file, even if the writer is killed. Two writers racing on one
path both succeed and the last rename wins.
"""

import os
import secrets


def atomic_write_bytes(path: str, data: bytes, fsync: bool = False) -> None:
  """Writes `data` to `path` atomically, creating the folder if needed.

  The temporary file is named before it is created, so an interruption at
  any point (Ctrl-C or SIGTERM raise KeyboardInterrupt between any two
  bytecodes) leaves neither it nor a partial `path` behind.

  Args:
    path: the destination file.
    data: the complete file contents.
    fsync: also flush to stable storage before the rename (survives a power
      cut, not only a killed process; slower).
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  tmp = os.path.join(folder, "." + os.path.basename(path)[:100] + "." +
                     secrets.token_hex(4) + ".tmp")
  try:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      if fsync:
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, default_file_mode())
    os.replace(tmp, path)
  except BaseException as e:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    if isinstance(e, OSError) and not e.filename or (
        isinstance(e, OSError) and e.filename == tmp):  # Say which file.
      raise OSError(e.errno, e.strerror, path) from e
    raise


def atomic_write_text(path: str, text: str, fsync: bool = False) -> None:
  """`atomic_write_bytes` for UTF-8 text."""
  atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def default_file_mode() -> int:
  """rw-r--r-- less the process umask: what open() would have created."""
  mask = os.umask(0)
  os.umask(mask)
  return 0o644 & ~mask
