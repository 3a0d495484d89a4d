"""What both command-line tools share: quiet TensorFlow, one-line errors."""

import os
import sys
import tempfile
from typing import Callable

from absl import app, flags, logging

from retrain.errors import UserError


def quiet_tensorflow() -> None:
  """Imports TensorFlow without its C++ start-up chatter.

  TensorFlow prints device and CPU-feature notes on stderr while it loads,
  some before its log level applies. They are captured, and shown only if the
  import fails. Set TF_CPP_MIN_LOG_LEVEL yourself to see everything.
  """
  if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
    return
  os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      tf.config.list_physical_devices("GPU")  # Device probing talks too.
      tf.get_logger().setLevel("ERROR")  # Deprecation notes of TF1 APIs.
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
  except KeyboardInterrupt:
    sys.stderr.write(f"{program}: interrupted; completed outputs and cache "
                     "files are intact\n")
    return 130


def absl_entry(main: Callable[[list], int],
               program: str) -> Callable[[], None]:
  """A console-script entry point running `main` under absl.

  A bad flag (unknown name, wrong type or value) is one line on stderr and
  exit status 2, like every other input error.
  """
  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      sys.stderr.write(f"{program}: error: {e} (see --helpfull)\n")
      sys.exit(2)

  def entry() -> None:
    quiet_tensorflow()
    app.run(main, flags_parser=parse)
  return entry


def set_verbosity(name: str) -> None:
  logging.set_verbosity({"DEBUG": logging.DEBUG, "INFO": logging.INFO,
                         "WARN": logging.WARNING, "ERROR": logging.ERROR,
                         "FATAL": logging.FATAL}[name])
