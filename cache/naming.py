"""Where the sidecar file of an image lives.

  <bottleneck_dir>/<class folder>/<path below the class folder>.<model tag>.bn

e.g. /tmp/bottleneck/daisy/123.jpg.frozen_graph-1a2b3c4d5e6f.bn
"""

import hashlib
import os
import re

SUFFIX = ".bn"
_NAME_MAX = 255


def model_tag(name: str, digest: str) -> str:
  """A file-name-safe model identity: a readable name plus a content digest."""
  slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:40] or "model"
  return f"{slug}-{digest[:12]}"


def _safe_component(part: str) -> str:
  if part in ("", ".", "..") or "/" in part or "\\" in part or "\0" in part:
    raise ValueError(f"unsafe path component {part!r}")
  return part


def bottleneck_path(bottleneck_dir: str, class_dir: str, relpath: str,
                    tag: str) -> str:
  """The sidecar path for image `relpath` ('/'-separated) of folder `class_dir`.

  Raises ValueError for a component that could escape `bottleneck_dir`
  ('..', absolute paths, separators in the class folder name).
  """
  parts = [_safe_component(class_dir)]
  parts += [_safe_component(p) for p in relpath.split("/")]
  name = f"{parts[-1]}.{tag}{SUFFIX}"
  if len(name.encode("utf-8")) > _NAME_MAX:
    short = hashlib.sha1(parts[-1].encode("utf-8")).hexdigest()[:16]
    stem = parts[-1].encode("utf-8")[:100].decode("utf-8", "ignore")
    name = f"{stem}~{short}.{tag}{SUFFIX}"
  parts[-1] = name
  return os.path.join(bottleneck_dir, *parts)
