"""What both command-line tools share: absl entry, one-line errors."""

import sys
from typing import Callable

from absl import app, flags, logging

from cache.fs import StorageError
from retrain.errors import UserError
from retrain.tfimport import freeze_imports, quiet_tensorflow


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
