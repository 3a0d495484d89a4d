"""What both command-line tools share: quiet TensorFlow, one-line errors."""

import contextlib
import gc
import os
import sys
import tempfile
from typing import Callable, Iterator

from absl import app, flags, logging

from cache.fs import StorageError
from retrain.errors import UserError

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


def run_main(main: Callable[[], int], program: str) -> int:
  """Runs main(); a UserError becomes one line on stderr and exit status 2."""
  try:
    return main()
  except UserError as e:
    sys.stderr.write(f"{program}: error: {e}\n")
    return 2
  except StorageError as e:  # gs://, s3://, ... failing during the run.
    sys.stderr.write(f"{program}: error: {e}; completed outputs and cache "
                     "files are intact, run again to continue\n")
    return 1
  except KeyboardInterrupt:
    sys.stderr.write(f"{program}: interrupted; completed outputs and cache "
                     "files are intact\n")
    return 130


def absl_entry(main: Callable[[list], int], program: str,
               tensorflow_optional: bool = False) -> Callable[[], None]:
  """A console-script entry point running `main` under absl.

  Flags are parsed before TensorFlow is imported, so a bad flag (unknown
  name, wrong type or value) is one line on stderr and exit status 2, like
  every other input error, under any logging environment. TensorFlow is then
  imported quietly (see quiet_tensorflow); with `tensorflow_optional` a
  missing TensorFlow is left for `main` to handle.
  """
  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      sys.stderr.write(f"{program}: error: {e} (see --helpfull)\n")
      sys.exit(2)

  def quiet_then_main(argv) -> int:
    debug = getattr(flags.FLAGS, "logging_verbosity", None) == "DEBUG"
    quiet_tensorflow(show_startup=debug, optional=tensorflow_optional)
    freeze_imports()
    return main(argv)

  def entry() -> None:
    app.run(quiet_then_main, flags_parser=parse)
  return entry


def set_verbosity(name: str) -> None:
  logging.set_verbosity({"DEBUG": logging.DEBUG, "INFO": logging.INFO,
                         "WARN": logging.WARNING, "ERROR": logging.ERROR,
                         "FATAL": logging.FATAL}[name])
