"""Cache file naming, the binary format, atomic writes and filling."""

import os

import numpy as np
import pytest

import cache
from cache import format as fmt


def test_bottleneck_path_mirrors_classes_and_names_the_model():
  path = cache.bottleneck_path("/c", "daisy", "sub/x.jpg", "m-123")
  assert path == "/c/daisy/sub/x.jpg.m-123.bn"
  other = cache.bottleneck_path("/c", "daisy", "sub/x.jpg", "n-456")
  assert other != path


@pytest.mark.parametrize("class_dir,rel", [
    ("..", "x.jpg"), ("a", "../x.jpg"), ("a", "/etc/x.jpg"), ("a/b", "x.jpg"),
    ("", "x.jpg"), ("a", "b/../../x.jpg"),
])
def test_bottleneck_path_refuses_escapes(class_dir, rel):
  with pytest.raises(ValueError):
    cache.bottleneck_path("/c", class_dir, rel, "m")


def test_long_names_are_shortened_uniquely():
  a = cache.bottleneck_path("/c", "k", "é" * 200 + "a.jpg", "m-1")
  b = cache.bottleneck_path("/c", "k", "é" * 200 + "b.jpg", "m-1")
  assert a != b
  assert all(len(p.encode()) <= 255 for p in (os.path.basename(a),
                                               os.path.basename(b)))


def test_model_tag_is_safe():
  tag = cache.model_tag("models/mobile net:v1", "abcdef0123456789")
  assert tag == "models_mobile_net_v1-abcdef012345"


def test_format_round_trip_and_rejections():
  v = np.arange(7, dtype=np.float32) / 3
  data = cache.encode(v, "m-1", (10, 20))
  assert len(data) == fmt.HEADER_SIZE + 28
  np.testing.assert_array_equal(cache.decode(data, "m-1", (10, 20)), v)
  with pytest.raises(cache.CacheFormatError, match="another model"):
    cache.decode(data, "m-2", (10, 20))
  with pytest.raises(cache.CacheFormatError, match="changed"):
    cache.decode(data, "m-1", (10, 21))
  with pytest.raises(cache.CacheFormatError, match="truncated"):
    cache.decode(data[:-1], "m-1", (10, 20))
  with pytest.raises(cache.CacheFormatError, match="truncated"):
    cache.decode(data[:10], "m-1", (10, 20))
  corrupt = bytearray(data)
  corrupt[-1] ^= 0xFF
  with pytest.raises(cache.CacheFormatError, match="checksum"):
    cache.decode(bytes(corrupt), "m-1", (10, 20))
  with pytest.raises(cache.CacheFormatError, match="not a bottleneck"):
    cache.decode(b"0.1,0.2,0.3" + b" " * 60, "m-1", (10, 20))


def test_read_vector_without_checks(tmp_path):
  v = np.linspace(0, 1, 5, dtype=np.float32)
  path = str(tmp_path / "x.bn")
  cache.atomic_write_bytes(path, cache.encode(v, "m", (1, 2)))
  np.testing.assert_array_equal(cache.read_vector(path), v)


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
  path = str(tmp_path / "deep" / "f.txt")
  cache.atomic_write_text(path, "old")
  cache.atomic_write_text(path, "new contents")
  with open(path) as f:
    assert f.read() == "new contents"
  assert os.listdir(tmp_path / "deep") == ["f.txt"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
  path = str(tmp_path / "f.bin")
  cache.atomic_write_bytes(path, b"old")

  def fail(src, dst):
    raise OSError("disk full")
  monkeypatch.setattr(os, "replace", fail)
  with pytest.raises(OSError):
    cache.atomic_write_bytes(path, b"new")
  monkeypatch.undo()
  with open(path, "rb") as f:
    assert f.read() == b"old"
  assert os.listdir(tmp_path) == ["f.bin"]


def _images(tmp_path, n):
  refs = []
  for i in range(n):
    p = tmp_path / "img" / "k" / f"{i}.jpg"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x" * (i + 1))
    refs.append(cache.ImageRef(str(p), "k", f"{i}.jpg"))
  return refs


def _fake_compute(calls):
  def compute(refs):
    paths = [r.path for r in refs]
    calls.append(paths)
    for i, p in enumerate(paths):
      if p.endswith("3.jpg"):
        yield i, None, "cannot decode it"
      else:
        yield i, np.full(4, os.path.getsize(p), np.float32), None
  return compute


def test_fill_computes_once_then_reads_back(tmp_path):
  refs = _images(tmp_path, 6)
  store = cache.BottleneckCache(str(tmp_path / "bn"), "m-1")
  calls = []
  first = store.fill(refs, _fake_compute(calls))
  assert first.computed == 5 and first.from_cache == 0
  assert first.failures == [(refs[3].path, "cannot decode it")]
  assert list(first.ok) == [True, True, True, False, True, True]
  assert first.vectors[5, 0] == 6
  # A skipped image gets no file.
  assert not os.path.exists(store.path_for(refs[3]))
  second = store.fill(refs, _fake_compute(calls))
  assert second.from_cache == 5 and second.computed == 0
  assert calls[1] == [refs[3].path]  # Only the bad one is retried.
  np.testing.assert_array_equal(second.vectors[second.ok],
                                first.vectors[first.ok])


def test_fill_recomputes_changed_corrupt_and_other_model(tmp_path):
  refs = _images(tmp_path, 3)
  store = cache.BottleneckCache(str(tmp_path / "bn"), "m-1")
  store.fill(refs, _fake_compute([]))
  with open(refs[0].path, "wb") as f:  # Changed image.
    f.write(b"y" * 50)
  with open(store.path_for(refs[1]), "r+b") as f:  # Corrupt file.
    f.truncate(20)
  calls = []
  result = store.fill(refs, _fake_compute(calls))
  assert sorted(calls[0]) == sorted([refs[0].path, refs[1].path])
  assert result.vectors[0, 0] == 50
  other = cache.BottleneckCache(str(tmp_path / "bn"), "m-2")
  calls = []
  other.fill(refs, _fake_compute(calls))
  assert len(calls[0]) == 3
