"""Progress reports on a terminal and in logs."""

import io

from retrain.reports.progress import Progress


class _Tty(io.StringIO):

  def isatty(self):
    return True


class _Clock:

  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_terminal_gets_a_bar_with_rate_and_eta():
  stream, clock = _Tty(), _Clock()
  p = Progress("Bottlenecks (20 cached)", 100, stream=stream, clock=clock)
  clock.t = 2.0
  p.update(50, "new")
  out = stream.getvalue()
  assert "\r" in out and "[############............] 50/100" in out
  assert "25/s, ETA 0:02 | new" in out
  clock.t = 4.0
  p.update(100)
  assert stream.getvalue().endswith("\n")


def test_log_lines_when_not_a_terminal_are_throttled():
  lines, clock = [], _Clock()
  p = Progress("Training", 4000, stream=io.StringIO(), log_every=5,
               log=lines.append, clock=clock)
  for step in range(1, 4001):
    clock.t = step / 1000
    p.update(step, f"step {step}")
  assert len(lines) == 1 + 4000 // 5000 + 1  # First, none in between, last.
  assert lines[-1].startswith("Training: 4000/4000, 1000/s")
  assert "ETA" not in lines[-1]
  assert "\r" not in "".join(lines)


def test_every_update_logged_with_log_every_zero():
  lines = []
  p = Progress("Training", 3, stream=io.StringIO(), log_every=0,
               log=lines.append)
  for i in range(1, 4):
    p.update(i)
  assert len(lines) == 3


def test_no_rate_or_eta_before_it_settles():
  lines, clock = [], _Clock()
  p = Progress("Bottlenecks", 500, stream=io.StringIO(), log_every=0,
               log=lines.append, clock=clock)
  clock.t = 0.5  # One image after start-up costs: a rate would mislead.
  p.update(1)
  clock.t = 1.9
  p.update(100)  # Many items, but not yet two seconds.
  clock.t = 2.5
  p.update(4)  # Two seconds, but only 4 items.
  clock.t = 3.0
  p.update(150)
  assert lines[:3] == ["Bottlenecks: 1/500", "Bottlenecks: 100/500",
                       "Bottlenecks: 4/500"]
  assert lines[3] == "Bottlenecks: 150/500, 50/s, ETA 0:07"
