"""The audit kept in the cache folder, so that a warm run with the same
images, vectors and settings reads it instead of redoing it.

The key is a SHA-1 of everything the findings depend on: each image's path,
class and set, the labels, the vectors' bytes, the training settings the
out-of-fold layers use and VERSION (raised when the audit's rules change).
Files are written atomically under <bottleneck_dir>/.audit/ (a hidden
folder: never taken for a class), the newest KEEP kept.
"""

import hashlib
import json
from typing import Optional, Sequence

import numpy as np

from cache import fs
from retrain.audit import findings
from retrain.config import HParams

VERSION = 1
FOLDER = ".audit"
KEEP = 8
_BLOCK = 65536


def key(rows: findings.Rows, set_names: Sequence[str],
        label_names: Sequence[str], hparams: HParams) -> str:
  """The hex digest naming this audit's inputs."""
  digest = hashlib.sha1()
  labeled = rows.labeled
  settings = (VERSION, hparams.random_seed, hparams.learning_rate,
              hparams.train_batch_size, hparams.class_sampling,
              hparams.how_many_training_steps, hparams.weight_decay,
              hparams.label_smoothing)
  digest.update(json.dumps([settings, list(label_names)]).encode())
  digest.update(json.dumps([list(labeled.paths), list(set_names),
                            labeled.y.tolist()]).encode())
  for start in range(0, len(rows), _BLOCK):
    digest.update(np.ascontiguousarray(
        rows[start:min(len(rows), start + _BLOCK)], np.float32).tobytes())
  return digest.hexdigest()


def _path(bottleneck_dir: str, name: str) -> str:
  return fs.join(bottleneck_dir, FOLDER, f"{name}.json")


def load(bottleneck_dir: str, name: str) -> Optional[findings.Audit]:
  """The audit stored under this key, or None (missing or unreadable)."""
  try:
    found = json.loads(fs.read_bytes(_path(bottleneck_dir, name)))
    return findings.Audit(found["images"], found["duplicate_groups"],
                          found["label_errors"], found["outliers"],
                          found["thresholds"], float(found["seconds"]))
  except (OSError, ValueError, KeyError, TypeError):
    return None


def store(bottleneck_dir: str, name: str, audit: findings.Audit) -> None:
  """Writes the audit under this key; drops all but the newest KEEP."""
  folder = fs.join(bottleneck_dir, FOLDER)
  fs.makedirs(folder)
  fs.write_text(_path(bottleneck_dir, name),
                json.dumps(audit.to_json()) + "\n")
  try:
    local = fs.for_path(folder).local
    if local:
      import os  # pylint: disable=g-import-not-at-top
      files = sorted((os.path.getmtime(os.path.join(folder, f)), f)
                     for f in os.listdir(folder) if f.endswith(".json"))
      for _, f in files[:-KEEP]:
        os.remove(os.path.join(folder, f))
  except OSError:
    pass  # Another run sharing the cache removed it first.


def audited(data, set_names: Sequence[str], label_names: Sequence[str],
            hparams: HParams, bottleneck_dir: str,
            keep: bool = True) -> findings.Audit:
  """findings.run's audit, read from the cache folder when it holds this
  one, else made (and kept there if `keep`)."""
  name = key(findings.Rows(data), set_names, label_names, hparams)
  audit = load(bottleneck_dir, name)
  if audit is not None:
    audit.reused = True
    return audit
  audit = findings.run(data, set_names, label_names, hparams)
  if keep:
    store(bottleneck_dir, name, audit)
  return audit
