"""Learning-rate schedules, shared by stage 1 and stage 2.

A schedule gives step t of T (1-based) its rate as a share of the first
step's. cosine: 0.5 * (1 + cos(pi * (t - 1) / T)), from 1 down to nearly 0,
so the last steps barely move the weights and the trained layer is the
average of many noisy steps rather than the last one's; constant: the rate
throughout (the classic tool's).
"""

from typing import Callable, Dict

import numpy as np

from retrain.config import HParams

SCHEDULES: Dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "cosine": lambda t, steps: 0.5 * (1 + np.cos(np.pi * (t - 1) /
                                                 max(steps, 1))),
    "constant": lambda t, steps: np.ones_like(t, np.float64),
}


def shares(name: str, steps: int) -> np.ndarray:
  """float32 [steps]: each step's rate as a share of the first's."""
  t = np.arange(1, steps + 1, dtype=np.float64)
  return np.asarray(SCHEDULES[name](t, steps), np.float32)


# --learning_rate_schedule: a schedule above, or auto.
CHOICES = ("auto",) + tuple(SCHEDULES)


def of(hparams: HParams) -> str:
  """The schedule stage 1's layer trains on: --learning_rate_schedule, auto
  being cosine where the regularization and rate are searched
  (weight_decay -1) and constant where the flags set them."""
  if hparams.learning_rate_schedule != "auto":
    return hparams.learning_rate_schedule
  return "cosine" if hparams.weight_decay < 0 else "constant"
