"""What each model of several adds: each alone and the combination, scored
the same way (the regularization search's held-out accuracy and cross
entropy at its chosen setting), with a client's time per photo and size.
"""

import dataclasses
from typing import Dict, List

from retrain.config import HParams
from retrain.data import images
from retrain.features import combined, timing
from retrain.features.model import FeatureExtractor
from retrain.features.sets import LabeledBottlenecks
from retrain.training import regularization


@dataclasses.dataclass(frozen=True)
class ModelScore:
  """One model, or the combination ("+"-joined sources), as scored."""
  model: str
  bottleneck_size: int
  accuracy: float  # Held-out, at the setting the search chose for it.
  cross_entropy: float
  scored_on: str
  milliseconds: float  # Per photo, batch 1, this machine.
  megabytes: float

  def describe(self) -> str:
    return (f"{self.model}: accuracy {100 * self.accuracy:.1f}%, cross "
            f"entropy {self.cross_entropy:.4f}, {self.milliseconds:.1f} "
            f"ms/photo, {self.megabytes:.1f} MB")


def _score(choice: regularization.Choice):
  if not choice.tried:  # Not searched (flags, too few images).
    return float("nan"), float("nan")
  best = choice.tried.index(choice.chosen)
  return choice.accuracy[best], choice.cross_entropy[best]


def compare(fx: FeatureExtractor, sets: Dict[str, LabeledBottlenecks],
            class_count: int, hparams: HParams,
            chosen: regularization.Choice, memo_root: str = ""
            ) -> List[ModelScore]:
  """Each of fx.members alone, then the combination (`chosen`: the run's
  own search); empty for one model."""
  if not fx.members:
    return []
  rows = []
  for i, model in enumerate(fx.members):
    own = combined.columns(sets, fx, i)
    choice = regularization.choose(own[images.TRAINING],
                                   own[images.VALIDATION], class_count,
                                   hparams, memo_root)
    accuracy, entropy = _score(choice)
    rows.append(ModelScore(
        model.source, model.bottleneck_size, accuracy, entropy,
        choice.scored_on, timing.milliseconds_per_image(model, memo_root),
        timing.megabytes(model)))
  accuracy, entropy = _score(chosen)
  rows.append(ModelScore(
      " + ".join(m.source for m in fx.members), fx.bottleneck_size, accuracy,
      entropy, chosen.scored_on, timing.milliseconds_per_image(fx, memo_root),
      timing.megabytes(fx)))
  return rows


def advice(scores: List[ModelScore]) -> str:
  """A warning when a model alone scores at least as well as the
  combination (by held-out cross entropy, then accuracy); "" otherwise."""
  if len(scores) < 3:
    return ""
  *alone, both = scores
  best = min(alone, key=lambda s: (s.cross_entropy, -s.accuracy))
  if not (best.cross_entropy <= both.cross_entropy and
          best.accuracy >= both.accuracy):
    return ""
  return (f"{best.model} alone scores as well as all {len(alone)} models "
          f"together (accuracy {100 * best.accuracy:.1f}% vs "
          f"{100 * both.accuracy:.1f}%, cross entropy "
          f"{best.cross_entropy:.4f} vs {both.cross_entropy:.4f}) at "
          f"{best.milliseconds:.1f} instead of {both.milliseconds:.1f} "
          "ms/photo: the others add little on these photos; consider it "
          "alone")
