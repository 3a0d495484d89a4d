"""The audit kept in the cache folder (cache/memo.py), so that a warm run
with the same images, vectors and settings reads it instead of redoing it.

The key covers everything the findings depend on: each image's path, class
and set, the labels, the vectors' bytes, the training settings the
out-of-fold layers use and VERSION (raised when the audit's rules change).
"""

from typing import Sequence

from cache import memo
from retrain.audit import findings
from retrain.config import HParams

VERSION = 1
KIND = "audit"
FOLDER = "." + KIND  # Under --bottleneck_dir.


def key(data, set_names: Sequence[str], label_names: Sequence[str],
        hparams: HParams) -> str:
  """The hex digest naming this audit's inputs."""
  settings = (VERSION, hparams.random_seed, hparams.learning_rate,
              hparams.train_batch_size, hparams.class_sampling,
              hparams.how_many_training_steps, hparams.weight_decay,
              hparams.label_smoothing)
  return memo.digest([list(settings), list(label_names), list(data.paths),
                      list(set_names), data.y, findings.Rows(data)])


def audited(data, set_names: Sequence[str], label_names: Sequence[str],
            hparams: HParams, bottleneck_dir: str,
            keep: bool = True) -> findings.Audit:
  """findings.run's audit, read from the cache folder when it holds this
  one, else made (and kept there if `keep`)."""
  name = key(data, set_names, label_names, hparams)
  found = memo.load(bottleneck_dir, KIND, name)
  try:
    return findings.Audit(found["images"], found["duplicate_groups"],
                          found["label_errors"], found["outliers"],
                          found["thresholds"], float(found["seconds"]),
                          reused=True)
  except (TypeError, KeyError, ValueError):
    pass  # Not kept (None) or not readable: made again.
  audit = findings.run(data, set_names, label_names, hparams)
  if keep:
    memo.store(bottleneck_dir, KIND, name, audit.to_json())
  return audit
