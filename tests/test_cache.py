"""Cache file naming, the binary format, atomic writes and filling."""

import os

import numpy as np
import pytest

import cache
from cache import format as fmt
from cache import index


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
  first = store.fill(refs, _fake_compute(calls), 4)
  assert first.computed == 5 and first.from_cache == 0
  assert first.failures == [(refs[3].path, "cannot decode it")]
  assert list(first.ok) == [True, True, True, False, True, True]
  assert first.vectors[5, 0] == 6
  # A skipped image gets no file.
  assert not os.path.exists(store.path_for(refs[3]))
  second = store.fill(refs, _fake_compute(calls), 4)
  assert second.from_cache == 5 and second.computed == 0
  assert calls[1] == [refs[3].path]  # Only the bad one is retried.
  np.testing.assert_array_equal(second.vectors[second.ok],
                                first.vectors[first.ok])


def test_fill_recomputes_changed_corrupt_and_other_model(tmp_path):
  refs = _images(tmp_path, 3)
  store = cache.BottleneckCache(str(tmp_path / "bn"), "m-1")
  store.fill(refs, _fake_compute([]), 4)
  with open(refs[0].path, "wb") as f:  # Changed image.
    f.write(b"y" * 50)
  with open(store.path_for(refs[1]), "r+b") as f:  # Corrupt file.
    f.truncate(20)
  calls = []
  result = store.fill(refs, _fake_compute(calls), 4)
  # The index still holds a valid copy of refs[1]'s vector.
  assert calls[0] == [refs[0].path]
  assert result.vectors[0, 0] == 50 and result.vectors[1, 0] == 2
  os.remove(index.index_path(store.root, store.tag))
  calls = []
  result = store.fill(refs, _fake_compute(calls), 4)
  assert calls[0] == [refs[1].path]  # Without the index: the bad sidecar.
  assert result.vectors[1, 0] == 2
  other = cache.BottleneckCache(str(tmp_path / "bn"), "m-2")
  calls = []
  other.fill(refs, _fake_compute(calls), 4)
  assert len(calls[0]) == 3


def test_warm_fill_reads_the_index_not_the_sidecars(tmp_path):
  refs = _images(tmp_path, 6)
  store = cache.BottleneckCache(str(tmp_path / "bn"), "m-1")
  first = store.fill(refs, _fake_compute([]), 4)
  for i, ref in enumerate(refs):
    if i != 3:
      os.remove(store.path_for(ref))
  calls = []
  second = store.fill(refs, _fake_compute(calls), 4)
  assert calls == [[refs[3].path]] and second.from_cache == 5
  assert isinstance(second.vectors, np.memmap)
  np.testing.assert_array_equal(second.vectors[second.ok],
                                first.vectors[first.ok])


def test_index_follows_added_and_removed_images(tmp_path):
  refs = _images(tmp_path, 6)
  store = cache.BottleneckCache(str(tmp_path / "bn"), "m-1")
  full = store.fill(refs, _fake_compute([]), 4)
  calls = []
  fewer = store.fill(refs[::-1][:4], _fake_compute(calls), 4)
  assert calls == [[refs[3].path]]  # Only the undecodable one is retried.
  np.testing.assert_array_equal(fewer.vectors[[0, 1, 3]],
                                full.vectors[[5, 4, 2]])
  again = index.PackedIndex.open(store.root, store.tag, 4)
  assert again.keys == [cache.store.index_key(r) for r in refs[::-1][:4]]


@pytest.mark.parametrize("damage", ["truncate", "flip_key", "flip_header",
                                    "other_dim"])
def test_damaged_index_falls_back_to_sidecars(tmp_path, damage):
  refs = _images(tmp_path, 4)
  store = cache.BottleneckCache(str(tmp_path / "bn"), "m-1")
  first = store.fill(refs, _fake_compute([]), 4)
  path = index.index_path(store.root, store.tag)
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    if damage == "truncate":
      f.truncate(len(data) - 3)
    elif damage == "flip_key":
      f.seek(len(data) - 2)
      f.write(bytes([data[-2] ^ 1]))
    elif damage == "flip_header":
      f.seek(0)
      f.write(b"XTIX")
  assert index.PackedIndex.open(
      store.root, store.tag, 5 if damage == "other_dim" else 4) is None
  if damage == "other_dim":
    return
  calls = []
  second = store.fill(refs, _fake_compute(calls), 4)
  assert calls == [[refs[3].path]] and second.from_cache == 3
  np.testing.assert_array_equal(second.vectors[second.ok],
                                first.vectors[first.ok])
  assert index.PackedIndex.open(store.root, store.tag, 4) is not None


def test_index_writer_removes_leftovers_of_killed_runs_only(tmp_path):
  root = str(tmp_path)
  prefix = f".m-1{index.SUFFIX}."
  dead = tmp_path / f"{prefix}dead.tmp"
  dead.write_bytes(b"half-written by a killed run")
  live = index.IndexWriter(root, "m-1", ["k/a.jpg"], 4)  # Holds its lock.
  assert not dead.exists()
  other = index.IndexWriter(root, "m-1", ["k/b.jpg"], 4)
  assert os.path.exists(live._tmp) and os.path.exists(other._tmp)
  live.put(0, np.ones(4), (1, 2))
  assert live.commit().keys == ["k/a.jpg"]
  other.abort()
  assert os.listdir(root) == ["m-1.index"]


class _SlowRemote(cache.fs.FileSystem):
  """slow://<local path>: the local disk behind 10 ms of latency per stat
  and read, counting how many are in flight at once."""

  local = False

  def __init__(self):
    import threading
    self.lock = threading.Lock()
    self.in_flight = 0
    self.most = {"stat": 0, "read_bytes": 0}

  def _wait(self, what):
    import time
    with self.lock:
      self.in_flight += 1
      self.most[what] = max(self.most[what], self.in_flight)
    time.sleep(0.01)
    with self.lock:
      self.in_flight -= 1

  def stat(self, path):
    self._wait("stat")
    return cache.fs.LOCAL.stat(path[len("slow://"):])

  def read_bytes(self, path):
    self._wait("read_bytes")
    return cache.fs.LOCAL.read_bytes(path[len("slow://"):])

  def download(self, path, local_path):
    import shutil
    shutil.copyfile(path[len("slow://"):], local_path)

  def upload(self, local_path, path):
    import shutil
    os.makedirs(os.path.dirname(path[len("slow://"):]), exist_ok=True)
    shutil.copyfile(local_path, path[len("slow://"):])


for _name in ("write_atomic", "exists", "isdir", "listdir", "makedirs",
              "remove"):
  setattr(_SlowRemote, _name, (lambda name: lambda self, path, *a, **k: getattr(
      cache.fs.LOCAL, name)(path[len("slow://"):], *a, **k))(_name))


def test_remote_stats_and_sidecar_reads_fly_many_at_once(tmp_path,
                                                         monkeypatch):
  remote = _SlowRemote()
  monkeypatch.setattr(cache.fs, "_REGISTERED", [])
  cache.fs.register(lambda p: p.startswith("slow://"), remote)
  refs = [cache.ImageRef("slow://" + r.path, r.class_dir, r.relpath)
          for r in _images(tmp_path, 40)]
  store = cache.BottleneckCache(f"slow://{tmp_path}/bn", "m-1")

  def compute(missing):
    for j, ref in enumerate(missing):
      yield j, np.full(4, len(remote.read_bytes(ref.path)), np.float32), None

  first = store.fill(refs, compute, 4)
  assert first.computed == 40
  assert remote.most["stat"] > 8  # Not one at a time.
  for f in os.listdir(tmp_path / "bn"):  # Sidecars only: no index.
    if f.endswith(".index"):
      os.remove(tmp_path / "bn" / f)
  remote.most["read_bytes"] = 0
  second = store.fill(refs, compute, 4)
  assert second.from_cache == 40 and second.computed == 0
  assert remote.most["read_bytes"] > 8
  np.testing.assert_array_equal(second.vectors, first.vectors)
  assert list(second.vectors[:, 0]) == [i + 1 for i in range(40)]
  # A local cache of local images: one request at a time, as before.
  assert list(cache.fs.map_paths(lambda x: x * 2, [1, 2, 3], False)) == [
      2, 4, 6]
