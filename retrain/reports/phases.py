"""Where a run's time went: wall seconds of its named phases, in order.

pipeline.run times each stage through `Phases.timed`, logs one line at
the end ("Phases: model load 0.4 s, extraction 1.6 s, ...") and puts the
phases known when the reports are written into report.json;
benchmarks/speed.py reads the line to print a cold run's phases.
"""

import time
from typing import Callable, Dict, TypeVar

T = TypeVar("T")


class Phases:
  """Seconds by phase name, in the order first timed."""

  def __init__(self):
    self.seconds: Dict[str, float] = {}

  def timed(self, name: str, fn: Callable[..., T], *args, **kwargs) -> T:
    """fn(*args, **kwargs), its wall time added to phase `name`."""
    start = time.monotonic()
    try:
      return fn(*args, **kwargs)
    finally:
      self.add(name, time.monotonic() - start)

  def add(self, name: str, seconds: float) -> None:
    self.seconds[name] = self.seconds.get(name, 0.0) + seconds

  def taken(self) -> Dict[str, float]:
    """The phases so far, without those that did nothing (under a
    millisecond: a stage not asked for)."""
    return {name: s for name, s in self.seconds.items() if s >= 1e-3}

  def describe(self) -> str:
    """One log line."""
    return "Phases: " + ", ".join(f"{name} {s:.2f} s"
                                  for name, s in self.taken().items())


def parse(line: str) -> Dict[str, float]:
  """{name: seconds} of a `describe` line (the text after "Phases: ")."""
  out = {}
  for part in line.split("Phases: ", 1)[1].split(", "):
    name, seconds, _ = part.rsplit(" ", 2)
    out[name] = float(seconds)
  return out
