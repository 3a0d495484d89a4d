"""The hash split, label naming and image listing (no TensorFlow)."""

import os

import pytest

from retrain.data import images
from retrain.errors import UserError

# Computed independently (SHA-1 of the name, the classic bucket formula), at
# 10% validation and 10% testing.
EXPECTED = {
    "a.jpg": "training", "b.jpg": "testing", "c.jpg": "testing",
    "d.jpg": "testing", "e.jpg": "validation", "g.jpg": "training",
    "o.jpg": "validation", "t.jpg": "training",
    "x_nohash_1.jpg": "validation", "sub/a.jpg": "testing",
    "10437770546_8bb6f7bdd3_m.jpg": "training",
}


@pytest.mark.parametrize("name,category", sorted(EXPECTED.items()))
def test_split_fixed_assignments(name, category):
  assert images.assign_category(name, 10, 10) == category


def test_nohash_variants_share_a_set():
  cats = {images.assign_category(f"x_nohash_{i}.jpg", 10, 10)
          for i in range(50)}
  assert cats == {images.assign_category("x", 10, 10)}
  assert images.hash_key("dir/pic_nohash_3.jpg") == "dir/pic"


def test_split_boundaries_follow_percentages():
  # e.jpg hashes to 4.894%: validation at 10%, testing when validation is 0
  # and testing 10, training when both are 0 or below it.
  assert images.assign_category("e.jpg", 10, 10) == "validation"
  assert images.assign_category("e.jpg", 10, 0) == "testing"
  assert images.assign_category("e.jpg", 4, 0) == "training"
  assert images.assign_category("e.jpg", 0, 5) == "validation"


def test_split_proportions_on_many_names():
  sets = images.split_images([f"img_{i}.jpg" for i in range(20000)], 10, 20)
  assert abs(len(sets["validation"]) / 20000 - 0.20) < 0.02
  assert abs(len(sets["testing"]) / 20000 - 0.10) < 0.02


@pytest.mark.parametrize("folder,label", [
    ("daisy", "daisy"), ("Sun_Flowers", "sun flowers"),
    ("a--b  c", "a b c"), ("_x_", "x"), ("Rose2", "rose2"),
    ("Café", "café"),
])
def test_label_for_dir(folder, label):
  assert images.label_for_dir(folder) == label


def _touch(path, data=b"x"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def test_list_images_layout(tmp_path):
  root = tmp_path / "photos"
  for i in range(25):
    _touch(str(root / "Cats" / f"c{i}.JPG"))
    _touch(str(root / "dogs" / f"d{i}.png"))
  _touch(str(root / "dogs" / "nested" / "deep" / "n.jpeg"))
  _touch(str(root / "dogs" / "w.WebP"))
  _touch(str(root / "dogs" / ".hidden.jpg"))
  _touch(str(root / "dogs" / ".cache" / "h.jpg"))
  _touch(str(root / "dogs" / "notes.txt"))
  _touch(str(root / "README.md"))
  os.makedirs(root / "empty")
  lists = images.list_images(str(root), 10, 10)
  assert lists.labels == ["cats", "dogs"]
  dogs = lists.classes[1]
  assert len(dogs) == 27
  all_dogs = dogs.training + dogs.validation + dogs.testing
  assert "nested/deep/n.jpeg" in all_dogs
  assert not any("hidden" in p or ".cache" in p for p in all_dogs)
  assert len(set(all_dogs)) == len(all_dogs)
  assert any("README.md" in w for w in lists.warnings)
  assert any("empty" in w for w in lists.warnings)
  assert lists.path(dogs, "nested/deep/n.jpeg") == str(
      root / "dogs" / "nested" / "deep" / "n.jpeg")


def test_split_does_not_depend_on_how_the_folder_is_spelled(tmp_path,
                                                          monkeypatch):
  root = tmp_path / "p"
  for i in range(30):
    _touch(str(root / "a" / f"{i}.jpg"))
    _touch(str(root / "b" / f"{i}.jpg"))
  one = images.list_images(str(root), 20, 20)
  two = images.list_images(str(root) + "/./", 20, 20)
  monkeypatch.chdir(tmp_path)
  three = images.list_images("p", 20, 20)
  key = lambda l: [(c.training, c.validation, c.testing) for c in l.classes]
  assert key(one) == key(two) == key(three)


def test_adding_images_keeps_existing_assignments(tmp_path):
  root = tmp_path / "p"
  for i in range(40):
    _touch(str(root / "a" / f"{i}.jpg"))
    _touch(str(root / "b" / f"{i}.jpg"))
  before = images.list_images(str(root), 10, 10)
  for i in range(40, 200):
    _touch(str(root / "a" / f"{i}.jpg"))
  after = images.list_images(str(root), 10, 10)
  for cat in images.CATEGORIES:
    assert set(before.classes[0].images(cat)) <= set(
        after.classes[0].images(cat))


def test_small_class_warns_and_keeps_a_training_image(tmp_path):
  root = tmp_path / "p"
  _touch(str(root / "tiny" / "e.jpg"))  # Hashes into validation.
  for i in range(30):
    _touch(str(root / "big" / f"{i}.jpg"))
  lists = images.list_images(str(root), 10, 10)
  tiny = lists.classes[1]
  assert tiny.training == ("e.jpg",)
  assert any("only 1 image(s)" in w for w in lists.warnings)
  assert any("no training image" in w for w in lists.warnings)


@pytest.mark.parametrize("setup,message", [
    ("missing", "no such folder"),
    ("one_class", "need at least 2 class"),
    ("no_classes", "found none"),
    ("same_label", "both give the label"),
])
def test_list_images_errors(tmp_path, setup, message):
  root = tmp_path / "p"
  os.makedirs(root)
  if setup == "missing":
    root = tmp_path / "nope"
  elif setup == "one_class":
    _touch(str(root / "only" / "a.jpg"))
  elif setup == "same_label":
    _touch(str(root / "Big Cats" / "a.jpg"))
    _touch(str(root / "big_cats" / "a.jpg"))
  with pytest.raises(UserError, match=message):
    images.list_images(str(root), 10, 10)
