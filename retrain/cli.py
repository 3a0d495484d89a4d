"""What both command-line tools share: absl entry, one-line errors."""

import errno
import signal
import sys
from typing import Callable, Optional

from absl import app, flags, logging

from cache.fs import StorageError
from retrain.errors import UserError
from retrain.tfimport import freeze_imports, quiet_tensorflow


# Exit status of a fault of the machine (full disk, read-only or vanished
# folder, no permission), as README.md lists it.
ENVIRONMENT_FAULT = 3

# What to do, by errno, when the machine refuses a read or write.
_FAULT_ADVICE = {
    errno.ENOSPC: "no space left on the device; free space there or choose "
                  "a folder on another disk",
    errno.EDQUOT: "disk quota exceeded; free space there or choose another "
                  "folder",
    errno.EFBIG: "file too large for this system's limits (ulimit -f); raise "
                 "the limit or choose another folder",
    errno.EROFS: "the file system is read-only; choose a folder you can "
                 "write to",
    errno.EACCES: "permission denied; choose a folder you can write to or "
                  "fix its permissions",
    errno.EPERM: "operation not permitted; choose a folder you can write to "
                 "or fix its permissions",
    errno.ENOENT: "no such file or folder (was it moved or deleted during "
                  "the run?)",
}
# The same faults as TensorFlow's own file writers report them.
_TF_FAULTS = {"No space left on device": errno.ENOSPC,
              "Disk quota exceeded": errno.EDQUOT,
              "Read-only file system": errno.EROFS,
              "Permission denied": errno.EACCES}


def environment_fault(e: BaseException) -> Optional[str]:
  """One line for a fault of the machine (an OSError, or TensorFlow's error
  for one), naming the path and what to do; None for anything else."""
  if isinstance(e, OSError) and e.errno in _FAULT_ADVICE:
    where = e.filename or "a file"
    return f"{where}: {_FAULT_ADVICE[e.errno]}"
  tf = sys.modules.get("tensorflow")
  if tf is not None and isinstance(e, tf.errors.OpError):
    text = str(getattr(e, "message", e))
    for needle, code in _TF_FAULTS.items():
      if needle in text:
        line = text.strip().splitlines()[0][:200]
        return f"{line}: {_FAULT_ADVICE[code]}"
  return None


class Terminated(KeyboardInterrupt):
  """SIGTERM, raised in the main thread: handled as an interruption."""


def _terminate(signum, frame) -> None:
  del signum, frame
  raise Terminated()


def run_main(main: Callable[[], int], program: str) -> int:
  """Runs main(); a UserError becomes one line on stderr and exit status 2,
  a fault of the machine one line and ENVIRONMENT_FAULT, an interruption
  (Ctrl-C or SIGTERM, as Kubernetes, Slurm and systemd send it) one line
  and 130."""
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
  except Exception as e:  # pylint: disable=broad-except
    fault = environment_fault(e)
    if fault is None:
      raise
    sys.stderr.write(f"{program}: error: {fault}; completed outputs and "
                     "cache files are intact, run again to continue\n")
    return ENVIRONMENT_FAULT


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
    signal.signal(signal.SIGTERM, _terminate)
    app.run(quiet_then_main, flags_parser=parse)
  return entry


def set_verbosity(name: str) -> None:
  logging.set_verbosity({"DEBUG": logging.DEBUG, "INFO": logging.INFO,
                         "WARN": logging.WARNING, "ERROR": logging.ERROR,
                         "FATAL": logging.FATAL}[name])
