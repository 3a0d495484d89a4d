"""Acting on an audit, when asked (never by default): nothing on disk is
moved or deleted; only which set an image trains or tests in changes.

--dedupe=group puts every member of a duplicate group in the set of its
member whose path sorts first (so a group never spans training and test);
this changes the split of those images only. --exclude_from_training=
audit.json leaves out of training the images that file lists as likely
label errors or outliers, every member of a duplicate group that spans
classes (their label is in doubt) and every photo with a photo-quality
finding (blurry, dark, ...); they stay in validation and test.
"""

import dataclasses
import json
from typing import Dict, List, Set, Tuple

import numpy as np

from cache import fs
from retrain.audit.findings import TRAINING, Audit
from retrain.errors import UserError
from retrain.features.sets import LabeledBottlenecks


def _original(path: str, mark: str) -> str:
  """The image a (possibly augmented) item is of, as an absolute path: an
  audit.json written with --image_dir spelled another way still matches."""
  return fs.abspath(path.split(mark, 1)[0])


def _rebuild(sets: Dict[str, LabeledBottlenecks],
             moves: Dict[str, str], drop: Set[str], mark: str
             ) -> Dict[str, LabeledBottlenecks]:
  """The sets with each original path in `moves` moved to its set there
  (augmented copies of one moved out of training left out) and every
  training item whose original is in `drop` left out of training."""
  kept: Dict[str, List[Tuple[LabeledBottlenecks, np.ndarray]]] = {
      name: [] for name in sets}
  for name, labeled in sets.items():
    stay, away = [], {}
    for i, path in enumerate(labeled.paths):
      original = _original(path, mark)
      target = moves.get(original, name)
      if name == TRAINING and original in drop:
        continue
      if target == name:
        stay.append(i)
      elif mark not in path:  # Augmented copies do not move.
        away.setdefault(target, []).append(i)
    kept[name].append((labeled, np.array(stay, np.int64)))
    for target, items in away.items():
      kept[target].append((labeled, np.array(items, np.int64)))
  out = {}
  for name, parts in kept.items():
    views = [labeled.subset(items) for labeled, items in parts if len(items)]
    if len(views) == 1 and len(parts) == 1 and len(views[0]) == len(
        sets[name]):
      out[name] = sets[name]  # Unchanged.
      continue
    stacked = (LabeledBottlenecks.stack(views) if views else
               sets[name].subset(np.zeros(0, np.int64)))
    in_memory = all(s.rows is None for s in sets.values())
    out[name] = stacked.in_memory() if in_memory else stacked
  return out


def dedupe(sets: Dict[str, LabeledBottlenecks], audit: Audit, mark: str
           ) -> Tuple[Dict[str, LabeledBottlenecks], int, Audit]:
  """--dedupe=group: (sets, images moved, the audit with its groups' sets
  as they are now: no leak is left)."""
  moves = {}
  groups = []
  for group in audit.groups:
    first = min(group["images"], key=lambda m: m["path"])
    for member in group["images"]:
      if member["set"] != first["set"]:
        moves[fs.abspath(member["path"])] = first["set"]
    groups.append(dict(group, sets=[first["set"]], leak=False,
                       images=[dict(m, set=first["set"])
                               for m in group["images"]]))
  return (_rebuild(sets, moves, set(), mark), len(moves),
          dataclasses.replace(audit, groups=groups))


def excluded_paths(audit_json: str) -> Set[str]:
  """The images an audit.json says to keep out of training (see module
  docstring). Raises UserError for a file that is not one."""
  flag = f"--exclude_from_training={audit_json}"
  try:
    found = json.loads(fs.read_bytes(audit_json).decode("utf-8"))
    paths = {fs.abspath(r["path"]) for key in ("label_errors", "outliers")
             for r in found[key]}
    # Photo-quality findings (audit.json files from before them have none).
    paths.update(fs.abspath(r["path"]) for r in found.get("quality", []))
    for group in found["duplicate_groups"]:
      if not group["same_class"]:
        paths.update(fs.abspath(m["path"]) for m in group["images"])
  except OSError as e:
    raise UserError(f"{flag}: cannot read it ({e.strerror or e}); pass the "
                    "audit.json a run wrote") from None
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f"{flag}: not an audit.json retrain wrote ({e!r}); pass "
                    "the audit.json beside a run's report.json") from None
  return paths


def exclude(sets: Dict[str, LabeledBottlenecks], paths: Set[str], mark: str
            ) -> Tuple[Dict[str, LabeledBottlenecks], int]:
  """--exclude_from_training: (sets, original training images left out)."""
  count = sum(1 for p in sets[TRAINING].paths
              if mark not in p and fs.abspath(p) in paths)
  return _rebuild(sets, {}, paths, mark), count
