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


# The photo-quality kinds plant_quality makes (audit/quality.py finds).
QUALITY_KINDS = ("blurry", "dark", "light", "grayscale", "odd_size",
                 "odd_aspect_ratio", "low_information")


@dataclasses.dataclass
class PlantedQuality:
  """What plant_quality did: the folder, and each planted photo's kind."""
  root: str
  bad: Dict[str, str] = dataclasses.field(default_factory=dict)

  def of_kind(self, kind: str) -> List[str]:
    return sorted(p for p, k in self.bad.items() if k == kind)


def _spoil(image, kind: str, variant: int, rng: np.random.Generator):
  """One bad version of a PIL RGB photo (variant picks the strength)."""
  from PIL import Image, ImageEnhance, ImageFilter  # pylint: disable=g-import-not-at-top
  w, h = image.size
  if kind == "blurry":  # Out of focus: 1.5% to 3% of the longer side.
    radius = max(w, h) * (0.015 + 0.005 * (variant % 4))
    return image.filter(ImageFilter.GaussianBlur(radius))
  if kind == "dark":  # Underexposed.
    return ImageEnhance.Brightness(image).enhance(0.12 + 0.04 * (variant % 3))
  if kind == "light":  # Overexposed: burnt out.
    return ImageEnhance.Brightness(image).enhance(2.6 + 0.6 * (variant % 3))
  if kind == "grayscale":
    return image.convert("L").convert("RGB")
  if kind == "odd_size":  # A thumbnail, 32 px wide.
    return image.resize((32, max(1, round(32 * h / w))), Image.BILINEAR)
  if kind == "odd_aspect_ratio":  # A thin strip of the photo.
    strip = max(8, h // (5 + variant % 3))
    top = int(rng.integers(0, h - strip + 1))
    return image.crop((0, top, w, top + strip))
  if kind == "low_information":  # Almost flat: its mean colour and a
    # little noise, or a faint shadow of the photo.
    mean = np.asarray(image, np.float32).reshape(-1, 3).mean(0)
    if variant % 2:
      pixels = mean + rng.normal(0, 2.0, (h, w, 3))
    else:
      pixels = mean + 0.04 * (np.asarray(image, np.float32) - mean)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
  raise ValueError(kind)


def plant_quality(source: str, dest: str, per_kind: int = 6,
                  clean_per_class: int = 0, seed: int = 0
                  ) -> PlantedQuality:
  """dest/<class>/...: the photos of `source` (at most clean_per_class of
  each class; 0: all) and, filed among them, `per_kind` bad versions of
  other photos of it for each QUALITY_KINDS kind (8 blurry)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  photos = _photos(source)
  planted = PlantedQuality(dest)
  spare = []
  for label, names in photos.items():
    os.makedirs(os.path.join(dest, label), exist_ok=True)
    keep = names[:clean_per_class] if clean_per_class else names
    for name in keep:
      _link(os.path.join(source, label, name),
            os.path.join(dest, label, name))
    spare += [(label, n) for n in names[len(keep):]] or []
  if not spare:  # Every photo is kept: spoil copies of some of them.
    spare = [(label, n) for label, names in photos.items() for n in names]
  order = rng.permutation(len(spare))
  k = 0
  for kind in QUALITY_KINDS:
    for variant in range(8 if kind == "blurry" else per_kind):
      label, name = spare[order[k % len(spare)]]
      k += 1
      with Image.open(os.path.join(source, label, name)) as im:
        bad = _spoil(im.convert("RGB"), kind, variant, rng)
      path = os.path.join(dest, label,
                          f"planted_{kind}_{variant}_{os.path.splitext(name)[0]}.jpg")
      bad.save(path, quality=95)
      planted.bad[path] = kind
  return planted
