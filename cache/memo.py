"""Results computed from cached bottlenecks, kept beside them so that a warm
run with the same inputs reads them instead of recomputing: the audit
(retrain/audit/memo.py) and the regularization choice
(retrain/training/regularization.py).

Each kind has a hidden folder <root>/.<kind>/ (a dot folder is never taken
for a class) of JSON files named by a SHA-1 of every input (digest), written
atomically; the newest KEEP of a kind are kept.
"""

import hashlib
import json
import os
from typing import Iterable, Optional

import numpy as np

from cache import fs

KEEP = 8
_ROWS = 65536


def digest(parts: Iterable[object]) -> str:
  """SHA-1 hex of parts: numpy arrays (and anything sliceable into float32
  rows with a shape, read a block of rows at a time) by their bytes, the
  rest as JSON."""
  h = hashlib.sha1()
  for part in parts:
    if hasattr(part, "shape") and len(getattr(part, "shape")) == 2:
      h.update(repr(tuple(part.shape)).encode())
      for start in range(0, part.shape[0], _ROWS):
        h.update(np.ascontiguousarray(
            part[start:min(part.shape[0], start + _ROWS)],
            np.float32).tobytes())
    elif isinstance(part, np.ndarray):
      h.update(repr((part.dtype.str, part.shape)).encode())
      h.update(np.ascontiguousarray(part).tobytes())
    else:
      h.update(json.dumps(part, sort_keys=True).encode())
    h.update(b"\0")
  return h.hexdigest()


def _path(root: str, kind: str, key: str) -> str:
  return fs.join(root, "." + kind, f"{key}.json")


def load(root: str, kind: str, key: str) -> Optional[object]:
  """The JSON value stored under this key, or None (missing, unreadable)."""
  try:
    return json.loads(fs.read_bytes(_path(root, kind, key)))
  except (OSError, ValueError):
    return None


def store(root: str, kind: str, key: str, value: object) -> bool:
  """Writes value under this key (atomically); drops all but the newest
  KEEP of kind (on a local disk). Best effort: a cache folder that cannot
  be written (read-only, shared, full) only loses the shortcut; returns
  whether it was kept."""
  folder = fs.join(root, "." + kind)
  try:
    fs.makedirs(folder)
    fs.write_text(_path(root, kind, key), json.dumps(value) + "\n")
  except OSError:  # Also fs.StorageError.
    return False
  if not fs.for_path(folder).local:
    return True
  try:
    files = sorted((os.path.getmtime(os.path.join(folder, f)), f)
                   for f in os.listdir(folder) if f.endswith(".json"))
    for _, f in files[:-KEEP]:
      os.remove(os.path.join(folder, f))
  except OSError:
    pass  # Another run sharing the cache removed it first.
  return True
