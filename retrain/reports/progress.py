"""Progress reports: a live bar on a terminal, plain log lines otherwise."""

import sys
import time
from typing import Callable, Optional, TextIO

from absl import logging


def _clock(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  if seconds >= 3600:
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
  return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
  """Reports `done` of `total` with rate and ETA.

  On a terminal (stream.isatty()) it redraws one line in place, at most ten
  times a second; elsewhere it logs a line at most every `log_every` seconds
  (0: every update), and always the last one. Rate and ETA are shown only
  once they mean something: after SETTLE_SECONDS and SETTLE_ITEMS (the first
  items also pay start-up costs), and the rate again on the last report.
  """

  SETTLE_SECONDS = 2.0
  SETTLE_ITEMS = 5

  def __init__(self, what: str, total: int, stream: Optional[TextIO] = None,
               log_every: float = 5.0,
               log: Callable[[str], None] = lambda s: logging.info("%s", s),
               clock: Callable[[], float] = time.monotonic):
    self.what = what
    self.total = total
    self.stream = stream or sys.stderr
    self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
    self.log_every = log_every
    self._log = log
    self._clock = clock
    self._start = clock()
    self._last = None
    self._drawn = False

  def line(self, done: int, message: str = "") -> str:
    """The text of one report."""
    elapsed = self._clock() - self._start
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - done) / rate if rate > 0 else 0.0
    text = f"{self.what}: {done}/{self.total}"
    if self.tty:
      width = 24
      filled = int(width * done / self.total) if self.total else width
      text = f"{self.what} [{'#' * filled}{'.' * (width - filled)}] " \
             f"{done}/{self.total}"
    if done >= self.total and elapsed > 0:
      text += f", {rate:.0f}/s"
    elif elapsed >= self.SETTLE_SECONDS and done >= self.SETTLE_ITEMS:
      text += f", {rate:.0f}/s, ETA {_clock(eta)}"
    return text + (f" | {message}" if message else "")

  def update(self, done: int, message: str = "") -> None:
    now = self._clock()
    last = done >= self.total
    if self.tty:
      if last or self._last is None or now - self._last >= 0.1:
        self.stream.write("\r\x1b[K" + self.line(done, message))
        self.stream.flush()
        self._drawn = True
        self._last = now
      if last:
        self.close()
    elif (last or self._last is None or self.log_every <= 0 or
          now - self._last >= self.log_every):
      self._log(self.line(done, message))
      self._last = now

  def close(self) -> None:
    if self.tty and self._drawn:
      self.stream.write("\n")
      self.stream.flush()
      self._drawn = False
