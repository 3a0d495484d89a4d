"""How a process imports TensorFlow: without its start-up chatter, and with
what the import leaves alive frozen out of the garbage collector's sight.

Used by both commands and by Beam workers; imports nothing of retrain.
"""

import contextlib
import gc
import os
import sys
import tempfile
from typing import Iterator

# TF_CPP_MIN_LOG_LEVEL value that asks for TensorFlow's own notes.
_SHOW_ALL = "0"


def quiet_tensorflow(show_startup: bool = False,
                     optional: bool = False) -> bool:
  """Imports TensorFlow without its C++ start-up chatter; True if imported.

  TensorFlow 2.21 prints device and CPU-feature notes on stderr while it
  loads, whatever TF_CPP_MIN_LOG_LEVEL says. They are captured and shown
  only if the import fails, unless `show_startup` or TF_CPP_MIN_LOG_LEVEL=0
  asks for them. TF_CPP_MIN_LOG_LEVEL defaults to 2 (no INFO or WARNING
  notes from the C++ runtime); a value the user set is kept.

  Args:
    show_startup: let the start-up notes through (--logging_verbosity=DEBUG).
    optional: TensorFlow not being installed is fine (returns False).
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if sys.modules.get("tensorflow") is not None:
    return True
  try:
    with quiet_stderr(show_startup):
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      tf.config.list_physical_devices("GPU")  # Device probing talks too.
      tf.get_logger().setLevel("DEBUG" if show_startup else "ERROR")
  except ImportError:
    if optional and sys.modules.get("tensorflow") is None:
      return False
    raise
  return True


def freeze_imports() -> None:
  """Moves every object alive now (TensorFlow's 300 000 and the other
  imports') out of the garbage collector's sight, for good.

  They live until the process ends anyway; unfrozen, every full collection
  walks them, and so does the interpreter's last one at exit: 0.6 s with
  TensorFlow loaded, per process (the command, each Beam worker). The
  import leaves no garbage behind (gc.collect() finds none), so nothing is
  kept that would have been freed.
  """
  gc.freeze()


@contextlib.contextmanager
def quiet_stderr(show: bool = False) -> Iterator[None]:
  """Captures what native code writes to stderr (file descriptor 2) inside
  the block; it is written out only if the block raises, or when `show` or
  TF_CPP_MIN_LOG_LEVEL=0 asks for everything."""
  if show or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == _SHOW_ALL:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      captured.seek(0)
      sys.stderr.write(captured.read().decode("utf-8", "replace"))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)
