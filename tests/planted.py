"""A photo folder with planted problems, and what was planted (the audit's
ground truth): byte copies under new names, re-encoded, resized, cropped
and flipped copies, copies filed under another class, photos moved to a
wrong class, and photos of nothing the classes are about.

Used by tests/test_audit.py and benchmarks/audit.py. Needs Pillow.
"""

import dataclasses
import os
import shutil
from typing import Dict, List, Sequence, Tuple

import numpy as np

EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass
class Planted:
  """What plant() did, by path in the new folder.

  copies: (original, copy) pairs, each with its kind: "bytes", "reencoded",
  "resized", "cropped", "flipped"; cross_class: the copies filed in another
  class than their original; mislabeled: {moved photo: its true class};
  outliers: photos of none of the classes.
  """
  root: str
  copies: List[Tuple[str, str, str]] = dataclasses.field(default_factory=list)
  cross_class: List[str] = dataclasses.field(default_factory=list)
  mislabeled: Dict[str, str] = dataclasses.field(default_factory=dict)
  outliers: List[str] = dataclasses.field(default_factory=list)

  def pairs(self, kind: str = "") -> List[Tuple[str, str]]:
    return [(a, b) for a, b, k in self.copies if not kind or k == kind]


def _photos(root: str) -> Dict[str, List[str]]:
  classes = sorted(d for d in os.listdir(root)
                   if os.path.isdir(os.path.join(root, d)))
  return {c: sorted(f for f in os.listdir(os.path.join(root, c))
                    if f.lower().endswith(EXTENSIONS)) for c in classes}


def copy_clean(source: str, dest: str) -> str:
  """dest/<class>/<file> for every photo of source (links where possible)."""
  for label, names in _photos(source).items():
    os.makedirs(os.path.join(dest, label), exist_ok=True)
    for name in names:
      _link(os.path.join(source, label, name), os.path.join(dest, label, name))
  return dest


def _link(src: str, dst: str) -> None:
  try:
    os.link(src, dst)
  except OSError:
    shutil.copyfile(src, dst)


def _variant(src: str, dst: str, kind: str, rng: np.random.Generator) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = Image.open(src).convert("RGB")
  w, h = image.size
  if kind == "reencoded":
    image.save(dst, "JPEG", quality=int(rng.integers(35, 60)))
    return
  if kind == "resized":
    scale = float(rng.uniform(0.4, 0.7))
    image = image.resize((max(1, int(w * scale)), max(1, int(h * scale))),
                         Image.BILINEAR)
  elif kind == "cropped":
    keep = float(rng.uniform(0.8, 0.9))
    cw, ch = int(w * keep), int(h * keep)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    image = image.crop((x, y, x + cw, y + ch))
  elif kind == "flipped":
    image = image.transpose(Image.FLIP_LEFT_RIGHT)
  image.save(dst, "JPEG", quality=90)


def plant(source: str, dest: str, outlier_photos: Sequence[str] = (),
          seed: int = 0, per_kind: int = 8, byte_copies: int = 10,
          cross_class: int = 10, mislabeled_share: float = 0.05) -> Planted:
  """A copy of `source` (class folders of photos) in `dest` with problems
  planted at random (seeded): `byte_copies` byte-identical copies and
  `per_kind` re-encoded, resized, cropped and flipped copies each in the
  original's class; `cross_class` copies (half byte copies, half resized)
  in another class; `mislabeled_share` of the original photos moved to
  another class; `outlier_photos` spread over the classes."""
  rng = np.random.default_rng(seed)
  photos = _photos(source)
  labels = list(photos)
  originals = [(c, n) for c in labels for n in photos[c]]
  copy_clean(source, dest)
  planted = Planted(dest)
  order = rng.permutation(len(originals))
  used = iter(order.tolist())

  def path(label, name):
    return os.path.join(dest, label, name)

  def other(label):
    return labels[(labels.index(label) + int(rng.integers(1, len(labels))))
                  % len(labels)]

  kinds = ["bytes"] * byte_copies + [
      k for k in ("reencoded", "resized", "cropped", "flipped")
      for _ in range(per_kind)]
  for n, kind in enumerate(kinds):
    label, name = originals[next(used)]
    stem = os.path.splitext(name)[0]
    copy = path(label, f"{kind}_{n}_{stem}.jpg")
    if kind == "bytes":
      shutil.copyfile(path(label, name), copy)
    else:
      _variant(path(label, name), copy, kind, rng)
    planted.copies.append((path(label, name), copy, kind))
  for n in range(cross_class):
    label, name = originals[next(used)]
    kind = "bytes" if n % 2 == 0 else "resized"
    copy = path(other(label), f"other_{n}_{os.path.splitext(name)[0]}.jpg")
    if kind == "bytes":
      shutil.copyfile(path(label, name), copy)
    else:
      _variant(path(label, name), copy, kind, rng)
    planted.copies.append((path(label, name), copy, kind))
    planted.cross_class.append(copy)
  # Moved photos are taken from those no copy was made of.
  for _ in range(int(round(mislabeled_share * len(originals)))):
    label, name = originals[next(used)]
    wrong = other(label)
    moved = path(wrong, f"moved_{name}")
    os.replace(path(label, name), moved)
    planted.mislabeled[moved] = label
  for n, photo in enumerate(outlier_photos):
    label = labels[n % len(labels)]
    dst = path(label, f"outlier_{os.path.basename(photo)}")
    shutil.copyfile(photo, dst)
    planted.outliers.append(dst)
  return planted
