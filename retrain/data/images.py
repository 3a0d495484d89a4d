"""Finding images, naming labels and the stable train/validation/test split.

Pure Python: no TensorFlow here, so all of it is testable without a session.

Layout: every sub-folder of the image folder is a class. Images anywhere below
a class folder (nested sub-folders included) belong to that class. Hidden files
and folders (names starting with '.') are ignored, and so are files at the top
level of the image folder.

The folder may be local or on any filesystem cache.fs serves (gs://, s3://,
ram://, ... once retrain.features.storage is imported).
"""

import dataclasses
import hashlib
import os
import re
from typing import Dict, List, Sequence, Tuple

from cache import fs
from retrain.errors import UserError

# File name endings read as images, compared case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")

# The classic tool's bucket count for the hash split; keep it so the split is
# the same as the classic tool's for the same file names.
MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1

# A class with fewer images than this gets a warning.
MIN_IMAGES_PER_CLASS = 20

TRAINING, VALIDATION, TESTING = "training", "validation", "testing"
CATEGORIES = (TRAINING, VALIDATION, TESTING)


@dataclasses.dataclass(frozen=True)
class ClassImages:
  """The images of one class, split into the three sets.

  Paths are relative to the class folder, with '/' as separator, sorted.
  """
  label: str
  dir_name: str
  training: Tuple[str, ...]
  validation: Tuple[str, ...]
  testing: Tuple[str, ...]

  def images(self, category: str) -> Tuple[str, ...]:
    return getattr(self, category)

  def __len__(self) -> int:
    return len(self.training) + len(self.validation) + len(self.testing)


@dataclasses.dataclass(frozen=True)
class ImageLists:
  """All classes of an image folder, sorted by label (= output index order)."""
  image_dir: str
  classes: Tuple[ClassImages, ...]
  warnings: Tuple[str, ...] = ()

  @property
  def labels(self) -> List[str]:
    return [c.label for c in self.classes]

  def path(self, class_images: ClassImages, relpath: str) -> str:
    """The file path of one image."""
    return fs.join(self.image_dir, class_images.dir_name,
                   *relpath.split("/"))


def label_for_dir(dir_name: str) -> str:
  """The label of a class folder, in the classic tool's normalised form.

  Lower case, every run of characters other than letters and digits replaced
  by one space, leading and trailing spaces removed: "Sun_Flowers" ->
  "sun flowers". (The classic tool kept only ASCII letters and digits and did
  not strip; for ASCII names without leading or trailing separators the labels
  are the same.)
  """
  return re.sub(r"[\W_]+", " ", dir_name.lower()).strip()


def hash_key(relpath: str) -> str:
  """The part of an image path that decides its set: '_nohash_' and after it go.

  Files named like "photo_nohash_1.jpg" and "photo_nohash_2.jpg" share a key,
  so variants of one photo always land in the same set.
  """
  return re.sub(r"_nohash_.*$", "", relpath)


def assign_category(relpath: str, testing_percentage: float,
                    validation_percentage: float) -> str:
  """The set ('training', 'validation' or 'testing') an image belongs to.

  The classic rule: SHA-1 of the hash key, bucketed into percentages. It
  depends only on the path relative to the class folder, so an image keeps its
  set across runs and when other images are added.
  """
  digest = hashlib.sha1(hash_key(relpath).encode("utf-8")).hexdigest()
  percentage = ((int(digest, 16) % (MAX_NUM_IMAGES_PER_CLASS + 1)) *
                (100.0 / MAX_NUM_IMAGES_PER_CLASS))
  if percentage < validation_percentage:
    return VALIDATION
  if percentage < testing_percentage + validation_percentage:
    return TESTING
  return TRAINING


def is_image_name(name: str) -> bool:
  return (not name.startswith(".") and
          os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS)


def find_class_images(class_dir: str) -> List[str]:
  """Image paths below `class_dir`, relative to it with '/' separators, sorted.

  Walks nested folders (not following folder links), skips hidden files and
  folders, and lists every file once.
  """
  found = []
  store = fs.for_path(class_dir)
  for root, dirs, files in store.walk(class_dir):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    if store.local:
      rel_root = os.path.relpath(root, class_dir).replace(os.sep, "/")
    else:
      rel_root = root[len(class_dir.rstrip("/")):].strip("/") or "."
    for name in files:
      if not is_image_name(name):
        continue
      if store.local and not os.path.isfile(os.path.join(root, name)):
        continue
      found.append(name if rel_root == "." else f"{rel_root}/{name}")
  return sorted(found)


def folder_images(folder: str, label: str = "unknown") -> ImageLists:
  """Every image below `folder` (nested folders included) as one class's
  test set: photos to score, never to train on (--unknown_dir)."""
  folder = folder.rstrip("/") or "/"
  found = tuple(find_class_images(folder))
  if not found:
    raise UserError(f"--unknown_dir={folder}: no images (.jpg, .jpeg, "
                    ".png, .gif, .bmp, .webp) below it")
  return ImageLists(fs.dirname(folder), (ClassImages(
      label, os.path.basename(folder), (), (), found),))


def split_images(relpaths: Sequence[str], testing_percentage: float,
                 validation_percentage: float) -> Dict[str, List[str]]:
  """Groups image paths by set, keeping their order."""
  sets = {c: [] for c in CATEGORIES}
  for rel in relpaths:
    sets[assign_category(rel, testing_percentage, validation_percentage)
        ].append(rel)
  return sets


def list_images(image_dir: str, testing_percentage: float,
                validation_percentage: float) -> ImageLists:
  """Finds the classes and images of `image_dir` and splits them.

  Raises:
    UserError: the folder is missing, or fewer than two classes have images.
  """
  if not image_dir:
    raise UserError("--image_dir is required: pass a folder with one "
                    "sub-folder of images per class")
  try:
    return _list_images(image_dir, testing_percentage, validation_percentage)
  except OSError as e:  # A storage service failing midway, or no access.
    raise UserError(f"--image_dir={image_dir}: cannot read it "
                    f"({e.strerror or e})") from None


def _list_images(image_dir: str, testing_percentage: float,
                 validation_percentage: float) -> ImageLists:
  if not fs.isdir(image_dir):
    if fs.has_scheme(image_dir):
      raise UserError(f"--image_dir={image_dir}: not found; check the path, "
                      "that the bucket exists, and that this machine can "
                      "reach the service and has credentials (offline, "
                      "object stores say 'not found' too)")
    raise UserError(f"--image_dir={image_dir}: no such folder; pass a folder "
                    "with one sub-folder of images per class")
  warnings = []
  entries = sorted(fs.listdir(image_dir))
  folders = {e for e in entries if fs.isdir(fs.join(image_dir, e))}
  stray = [e for e in entries if not e.startswith(".") and e not in folders]
  if stray:
    warnings.append(
        f"ignoring {len(stray)} file(s) at the top level of {image_dir} "
        f"(only class sub-folders are read): {', '.join(stray[:5])}"
        + (" ..." if len(stray) > 5 else ""))
  classes = []
  seen_labels: Dict[str, str] = {}
  for dir_name in entries:
    class_dir = fs.join(image_dir, dir_name)
    if dir_name.startswith(".") or dir_name not in folders:
      continue
    relpaths = find_class_images(class_dir)
    if not relpaths:
      warnings.append(f"class folder {class_dir} has no images "
                      f"({'/'.join(IMAGE_EXTENSIONS)}); ignoring it")
      continue
    label = label_for_dir(dir_name)
    if not label:
      raise UserError(f"class folder {class_dir}: its name has no letters or "
                      "digits, so it gives an empty label; rename it")
    if label in seen_labels:
      raise UserError(
          f"class folders {seen_labels[label]!r} and {dir_name!r} in "
          f"{image_dir} both give the label {label!r}; rename one of them")
    seen_labels[label] = dir_name
    if len(relpaths) < MIN_IMAGES_PER_CLASS:
      warnings.append(f"class {label!r} has only {len(relpaths)} image(s); "
                      f"{MIN_IMAGES_PER_CLASS} or more give better results")
    sets = split_images(relpaths, testing_percentage, validation_percentage)
    if not sets[TRAINING]:
      # Too small for every split: move one image to training (the first by
      # name among the others), so the class can be learned at all.
      donor = VALIDATION if sets[VALIDATION] else TESTING
      moved = sets[donor].pop(0)
      sets[TRAINING].append(moved)
      warnings.append(f"class {label!r} had no training image after the "
                      f"split; using {moved} for training")
    classes.append(ClassImages(label, dir_name, tuple(sets[TRAINING]),
                               tuple(sets[VALIDATION]), tuple(sets[TESTING])))
  classes.sort(key=lambda c: c.label)
  if len(classes) < 2:
    found = f"only {classes[0].label!r}" if classes else "none"
    raise UserError(
        f"--image_dir={image_dir}: need at least 2 class sub-folders with "
        f"images, found {found}; put each class's images in its own "
        "sub-folder")
  return ImageLists(image_dir, tuple(classes), tuple(warnings))
