"""What both command-line tools share: absl entry, one-line errors."""

import errno
import re
import signal
import sys
import textwrap
from typing import Callable, List, Optional, Sequence, Tuple

from absl import app, flags, logging

from cache.fs import StorageError
from retrain.errors import UserError
from retrain.tfimport import freeze_imports, quiet_tensorflow


# Exit status of a fault of the machine (full disk, read-only or vanished
# folder, no permission), as README.md lists it.
ENVIRONMENT_FAULT = 3

# Every exit status of both tools, as README.md lists them (a test checks
# that the two agree) and --help prints them.
EXIT_STATUSES = (
    (0, "done"),
    (1, "a remote storage service failing mid-run (label_image: no image "
        "could be classified)"),
    (2, "bad input: one line on stderr says what is wrong and what to do"),
    (ENVIRONMENT_FAULT, "a fault of the machine (a full disk or quota, a "
                        "read-only, vanished or forbidden folder): one line "
                        "names the path and what to do"),
    (130, "interrupted (Ctrl-C or SIGTERM)"),
)


class FlagGroups:
  """A tool's flags, grouped where they are defined: `group(title)` before
  a group's DEFINE calls, `end()` after the last; every flag defined in
  between belongs to that group, in definition order (the one source of
  --help and of the README's flag tables)."""

  def __init__(self, flag_values=None):
    self.flag_values = flag_values or flags.FLAGS
    self._marks: List[Tuple[str, int]] = []
    self._end: Optional[int] = None

  def _count(self) -> int:
    return len(list(self.flag_values))

  def group(self, title: str) -> None:
    self._marks.append((title, self._count()))

  def end(self) -> None:
    self._end = self._count()

  def groups(self) -> List[Tuple[str, List[str]]]:
    """[(title, [flag name, ...])] in definition order."""
    names = list(self.flag_values)
    bounds = [start for _, start in self._marks[1:]] + [self._end]
    return [(title, names[start:stop])
            for (title, start), stop in zip(self._marks, bounds)]

  def help_text(self, usage: str,
                more: Sequence["FlagGroups"] = ()) -> str:
    """--help: the usage lines, each group's flags (then those of `more`)
    with their defaults, the exit statuses."""
    lines = [usage.rstrip(), ""]
    groups = self.groups() + [g for other in more for g in other.groups()]
    for title, names in groups:
      lines.append(f"{title}:")
      for name in names:
        lines += _flag_help(self.flag_values[name])
      lines.append("")
    lines.append("Exit status:")
    for code, what in EXIT_STATUSES:
      lines += textwrap.wrap(what, 78, initial_indent=f"  {code:<4} ",
                             subsequent_indent=" " * 7)
    lines += ["", "--version prints the versions; --helpfull also lists "
              "absl's own flags (logging, debugging)."]
    return "\n".join(lines) + "\n"


def _flag_help(flag) -> List[str]:
  """A flag's lines in --help: name and default, then its help, wrapped."""
  if flag.boolean:
    head = f"  --[no]{flag.name} (default: {str(flag.default).lower()})"
  elif flag.default in (None, "", []):
    head = f"  --{flag.name}"
  else:
    value = flag.default
    if isinstance(value, (list, tuple)):
      value = ",".join(str(v) for v in value)
    head = f"  --{flag.name}={value}"
  # absl's own suffix of a repeatable flag, said shorter.
  text = re.sub(r";\s+repeat this option to specify a list of values$",
                " (repeatable)", flag.help or "")
  return [head] + textwrap.wrap(text, 78, initial_indent=" " * 6,
                                subsequent_indent=" " * 6)


def versions(program: str) -> str:
  """--version: this tool's version (from the installed package's
  metadata), TensorFlow's and Python's, without importing TensorFlow."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import platform  # pylint: disable=g-import-not-at-top

  def version(package: str) -> str:
    try:
      return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      return "not installed"
  return (f"{program} {version('retrain')}\n"
          f"TensorFlow {version('tensorflow')}\n"
          f"Python {platform.python_version()}\n")


def _asks(argv: Sequence[str], names: Sequence[str]) -> bool:
  """Whether argv (after the program, before a lone --) holds one of
  `names` as a whole argument."""
  for arg in argv[1:]:
    if arg == "--":
      return False
    if arg in names:
      return True
  return False

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
               tensorflow_optional: bool = False,
               help_text: Optional[Callable[[], str]] = None
               ) -> Callable[[], None]:
  """A console-script entry point running `main` under absl.

  -h, --help (and --helpshort) print help_text(), --helpfull every flag
  (absl's own included) by module, --version the versions; each exits 0
  at once. Flags are parsed before TensorFlow is imported, so a bad
  flag (unknown name, wrong type or value) is one line on stderr and exit
  status 2, like every other input error, under any logging environment.
  TensorFlow is then imported quietly (see quiet_tensorflow); with
  `tensorflow_optional` a missing TensorFlow is left for `main` to handle.
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
    if help_text is not None and _asks(sys.argv, HELP_ARGUMENTS):
      sys.stdout.write(help_text())
      sys.exit(0)
    if help_text is not None and _asks(sys.argv, ("--helpfull",)):
      sys.stdout.write(help_text().split("\n\n", 1)[0] + "\n\nEvery flag, "
                       "absl's own included, by the module defining it:\n\n"
                       + flags.FLAGS.get_help() + "\n")
      sys.exit(0)
    if _asks(sys.argv, ("--version",)):
      sys.stdout.write(versions(program))
      sys.exit(0)
    signal.signal(signal.SIGTERM, _terminate)
    app.run(quiet_then_main, flags_parser=parse)
  return entry


# What asks for a tool's own help (absl's --helpfull lists everything).
HELP_ARGUMENTS = ("-h", "--help", "-help", "--helpshort", "-?")


def set_verbosity(name: str) -> None:
  logging.set_verbosity({"DEBUG": logging.DEBUG, "INFO": logging.INFO,
                         "WARN": logging.WARNING, "ERROR": logging.ERROR,
                         "FATAL": logging.FATAL}[name])
