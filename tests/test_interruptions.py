"""Killed runs, concurrent runs and stray writes: nothing is lost or corrupt."""

import importlib.util
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import cache
from retrain import pipeline
from retrain.config import HParams, ModelOptions
from tests import fixtures, helpers


# Enough that extraction outlasts the signal on a fast machine (633
# images/s in 2026-12: 600 images ended before SIGINT landed).
MANY = 1800


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
  root = tmp_path_factory.mktemp("many")
  return fixtures.make_color_images(str(root), per_class=MANY // 3,
                                    size=(60, 80))


def _args(image_dir, graph, bottleneck_dir, out, steps=1, extra=()):
  return [f"--image_dir={image_dir}", f"--graph={graph}",
          f"--bottleneck_dir={bottleneck_dir}",
          f"--output_graph={out}/graph.pb",
          f"--output_labels={out}/labels.txt", "--summaries_dir=",
          "--checkpoint_path=", "--bottleneck_batch_size=16",
          f"--how_many_training_steps={steps}", *extra]


def _has_matplotlib():
  return importlib.util.find_spec("matplotlib") is not None


def _popen(args, **kw):
  env = dict(os.environ, PYTHONPATH=helpers.REPO)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  return subprocess.Popen([sys.executable, "-m", "retrain", *args],
                          cwd=helpers.REPO, env=env, **kw)


def _cache_files(bottleneck_dir):
  return sorted(f for f in helpers.files_under(bottleneck_dir)
                if f.endswith(".bn"))


def _vectors(bottleneck_dir):
  """{relative path: vector} of every cache file, each checked intact."""
  out = {}
  for rel in _cache_files(bottleneck_dir):
    with open(os.path.join(bottleneck_dir, rel), "rb") as f:
      data = f.read()
    cache.verify(data)  # Raises on any partial or corrupt file.
    out[rel] = cache.read_vector(os.path.join(bottleneck_dir, rel))
  return out


@pytest.fixture(scope="module")
def reference(many_images, small_models, tmp_path_factory):
  """Bottlenecks from one uninterrupted run."""
  tmp = tmp_path_factory.mktemp("reference")
  proc = helpers.run_cli(_args(many_images, small_models["inception"],
                               tmp / "bn", tmp / "out"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  vectors = _vectors(str(tmp / "bn"))
  assert len(vectors) == MANY
  return vectors


def _assert_same(vectors, reference):
  assert sorted(vectors) == sorted(reference)
  for rel, v in vectors.items():
    np.testing.assert_allclose(v, reference[rel], rtol=1e-5, atol=1e-6)


def test_sigkill_while_writing_never_leaves_a_corrupt_file(
    many_images, small_models, reference, tmp_path):
  rng = np.random.default_rng(0)
  bn = str(tmp_path / "bn")
  kills_while_extracting = 0
  for _ in range(8):
    # Keep work to do: drop a random part of what earlier runs wrote (and
    # the packed index, which would otherwise still hold those vectors).
    for rel in _cache_files(bn) if os.path.isdir(bn) else []:
      if rng.random() < 0.35:
        os.remove(os.path.join(bn, rel))
    for name in os.listdir(bn) if os.path.isdir(bn) else []:
      if name.endswith(cache.index.SUFFIX):
        os.remove(os.path.join(bn, name))
    before = len(_cache_files(bn)) if os.path.isdir(bn) else 0
    proc = _popen(_args(many_images, small_models["inception"], bn,
                        tmp_path / "out"), stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while (proc.poll() is None and time.time() < deadline and
           (not os.path.isdir(bn) or len(_cache_files(bn)) <= before)):
      time.sleep(0.005)
    # A random moment while the rest is extracted (~200 images, a few
    # tenths of a second: later kills would mostly find extraction done).
    time.sleep(rng.uniform(0, 0.15))
    if proc.poll() is None:
      kills_while_extracting += len(_cache_files(bn)) < MANY
      proc.send_signal(signal.SIGKILL)
    proc.wait()
    _vectors(bn)  # Every file present is complete.
  assert kills_while_extracting >= 6
  present = len(_cache_files(bn))
  config = helpers.run_config(tmp_path, many_images, bottleneck_dir=bn,
                              saved_model_dir="", summaries_dir="",
                              checkpoint_path="")
  result = pipeline.run(config, HParams(how_many_training_steps=1),
                        ModelOptions(graph=small_models["inception"],
                                     tfhub_module=""))
  assert result.bottlenecks_from_cache == present
  assert result.bottlenecks_computed == MANY - present
  _assert_same(_vectors(bn), reference)


def test_two_runs_on_one_cache_both_succeed(many_images, small_models,
                                            reference, tmp_path):
  bn = str(tmp_path / "bn")
  procs = [_popen(_args(many_images, small_models["inception"], bn,
                        tmp_path / f"out{i}"), stdout=subprocess.DEVNULL,
                  stderr=subprocess.PIPE, text=True) for i in range(2)]
  for proc in procs:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
  _assert_same(_vectors(bn), reference)


def test_changed_image_gets_a_new_bottleneck(many_images, small_models,
                                             tmp_path):
  images = tmp_path / "photos"
  fixtures.make_color_images(str(images), per_class=20)
  config = helpers.run_config(tmp_path, str(images), saved_model_dir="",
                              summaries_dir="", checkpoint_path="")
  options = ModelOptions(graph=small_models["inception"], tfhub_module="")
  hp = HParams(how_many_training_steps=1)
  pipeline.run(config, hp, options)
  target = images / "red" / "img_000.jpg"
  cached = [os.path.join(config.bottleneck_dir, f)
            for f in _cache_files(config.bottleneck_dir)
            if f.startswith(os.path.join("red", "img_000.jpg"))]
  old = cache.read_vector(cached[0])
  # Same name, different picture (a blue one).
  target.write_bytes((images / "blue" / "img_005.jpg").read_bytes())
  again = pipeline.run(config, hp, options)
  assert again.bottlenecks_computed == 1
  new = cache.read_vector(cached[0])
  blue = [os.path.join(config.bottleneck_dir, f)
          for f in _cache_files(config.bottleneck_dir)
          if f.startswith(os.path.join("blue", "img_005.jpg"))]
  assert not np.allclose(new, old)
  np.testing.assert_allclose(new, cache.read_vector(blue[0]), atol=1e-6)


def test_killed_run_leaves_previous_outputs_intact(many_images, small_models,
                                                   tmp_path):
  out = tmp_path / "out"
  args = _args(many_images, small_models["inception"], tmp_path / "bn", out,
               extra=[f"--saved_model_dir={out}/saved_model"])
  first = helpers.run_cli(args)
  assert first.returncode == 0, first.stderr[-2000:]
  snapshot = {rel: (out / rel).read_bytes()
              for rel in helpers.files_under(str(out))}
  assert "graph.pb" in snapshot and "saved_model/saved_model.pb" in snapshot
  long_run = [a for a in args if not a.startswith("--how_many")] + [
      "--how_many_training_steps=10000000", "--random_seed=5",
      "--eval_step_interval=10"]  # Given: every evaluation is logged.
  proc = _popen(long_run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True)
  for line in proc.stderr:
    if "Step 100/" in line:
      break
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  after = {rel: (out / rel).read_bytes()
           for rel in helpers.files_under(str(out))}
  assert after == snapshot


def test_nothing_is_written_outside_the_named_paths(many_images,
                                                    small_models, tmp_path):
  dirs = {name: tmp_path / name for name in ("cwd", "home", "tmpdir")}
  for d in dirs.values():
    d.mkdir()
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  env = dict(os.environ, PYTHONPATH=helpers.REPO, HOME=str(dirs["home"]),
             TMPDIR=str(dirs["tmpdir"]))
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  args = _args(many_images, small_models["inception"], out / "bn", out,
               extra=[f"--summaries_dir={out}/summaries",
                      f"--checkpoint_path={out}/ckpt/model",
                      f"--saved_model_dir={out}/saved_model",
                      "--intermediate_store_frequency=1",
                      f"--intermediate_output_graphs_dir={out}/inter"])
  proc = subprocess.run([sys.executable, "-m", "retrain", *args],
                        cwd=str(dirs["cwd"]), env=env, capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  # TensorFlow's bundled Keras writes its default config ~/.keras/keras.json
  # on import when there is none, and matplotlib (optional, for the report
  # plot) its font cache: the libraries' own files, not ours.
  home = helpers.files_under(str(dirs["home"]))
  assert {f for f in home if not f.startswith(
      (os.path.join(".cache", "matplotlib") + os.sep,
       os.path.join(".config", "matplotlib") + os.sep))} <= {
           os.path.join(".keras", "keras.json")}
  for name in ("cwd", "tmpdir"):
    assert os.listdir(dirs[name]) == [], name
  assert (out / "keep.txt").read_text() == "mine"
  top = set(os.listdir(out))
  assert top == {"keep.txt", "bn", "graph.pb", "graph.json",
                 "graph.skipped.txt", "labels.txt", "summaries", "ckpt",
                 "saved_model", "inter", "report.json", "report.txt",
                 "report.html", "audit.json",
                 "confusion_matrix.png"} - (
                     set() if _has_matplotlib() else {"confusion_matrix.png"})
  assert not [f for f in helpers.files_under(str(out)) if f.endswith(".tmp")]


# ------------------------------------------- faults of the environment --

class _SmallDisk:
  """Folders on a tmpfs of a given size (mounted as root), or, where no
  mount is allowed, plain folders with the process's file size limited to
  that size (ulimit -f): either way writes fail as on a full disk."""

  def __init__(self, root):
    self.root = root
    self.mounts = []
    self.limit = None

  def folder(self, name, size_kb):
    path = os.path.join(str(self.root), name)
    os.makedirs(path)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k",
                           "tmpfs", path], capture_output=True)
    if proc.returncode == 0:
      self.mounts.append(path)
    else:
      self.limit = size_kb * 1024
    return path

  def grow(self, path, size_kb):
    if path in self.mounts:
      subprocess.run(["mount", "-o", f"remount,size={size_kb}k", path],
                     check=True)
    self.limit = None

  def preexec(self):
    limit = self.limit
    if limit is None:
      return None

    def apply():
      import resource  # pylint: disable=g-import-not-at-top
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a kill.
      resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply

  def close(self):
    for path in self.mounts:
      subprocess.run(["umount", "-l", path], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
  disk = _SmallDisk(tmp_path)
  yield disk
  disk.close()


def _run(args, preexec=None):
  proc = _popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, preexec_fn=preexec)
  out, err = proc.communicate(timeout=600)
  return proc.returncode, err


def _one_error_line(stderr, program="retrain"):
  """The one 'retrain: error:' line, checking there is no traceback."""
  assert "Traceback" not in stderr, stderr[-3000:]
  errors = [l for l in stderr.splitlines() if l.startswith(f"{program}: ")]
  assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr[
      -3000:]
  return errors[0]


def _temporary_files(root):
  return [f for f in helpers.files_under(str(root))
          if f.endswith(".tmp") or os.path.basename(f).startswith(".")]


def test_full_cache_disk_is_one_line_and_the_cache_stays_valid(
    many_images, small_models, small_disk, tmp_path):
  bn = small_disk.folder("bn", 1024)
  code, err = _run(_args(many_images, small_models["inception"], bn,
                         tmp_path / "out"), small_disk.preexec())
  assert code == 3, err[-3000:]
  line = _one_error_line(err)
  assert bn in line and "run again to continue" in line, line
  assert not _temporary_files(bn)
  present = _vectors(bn)  # Every cache file there is complete.
  assert not os.path.exists(tmp_path / "out" / "graph.pb")
  small_disk.grow(bn, 64 * 1024)
  code, err = _run(_args(many_images, small_models["inception"], bn,
                         tmp_path / "out"))
  assert code == 0, err[-3000:]
  assert f"Bottlenecks: {len(present)} from cache, {MANY - len(present)} " \
         "computed" in err


def test_full_output_disk_is_one_line_and_leaves_no_partial_outputs(
    many_images, small_models, small_disk, tmp_path):
  out = small_disk.folder("out", 64)
  code, err = _run(_args(many_images, small_models["inception"],
                         tmp_path / "bn", out), small_disk.preexec())
  assert code == 3, err[-3000:]
  line = _one_error_line(err)
  assert os.path.join(out, "graph.pb") in line, line
  # The model is written first, so no report describes a missing model.
  assert sorted(os.listdir(out)) == [], os.listdir(out)


def test_read_only_output_folder_is_one_line(many_images, small_models,
                                             tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs",
                         str(out)], capture_output=True)
  if proc.returncode != 0:
    if os.environ.get("CI") == "true":
      pytest.fail(f"cannot mount a read-only tmpfs: {proc.stderr}")
    pytest.skip("cannot mount a read-only tmpfs here")
  try:
    code, err = _run(_args(many_images, small_models["inception"],
                           tmp_path / "bn", out))
  finally:
    subprocess.run(["umount", "-l", str(out)], capture_output=True)
  assert code == 2, err[-3000:]  # Found before any work: bad input.
  assert "cannot write in" in _one_error_line(err)


def _wait_for(proc, pattern, timeout=120):
  """Reads proc's stderr lines until one contains `pattern`; returns all
  read so far (the rest keeps being drained on a thread)."""
  import threading  # pylint: disable=g-import-not-at-top
  seen, found = [], threading.Event()

  def drain():
    for line in proc.stderr:
      seen.append(line)
      if pattern in line:
        found.set()
    found.set()
  threading.Thread(target=drain, daemon=True).start()
  assert found.wait(timeout), "".join(seen)[-3000:]
  return seen


def _interrupted(proc, seen):
  proc.wait(timeout=120)
  time.sleep(0.2)  # The drain thread reads the last lines.
  err = "".join(seen)
  assert proc.returncode == 130, err[-3000:]
  assert _one_error_line(err) == ("retrain: interrupted; completed outputs "
                                  "and cache files are intact")
  return err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_during_extraction_is_an_interruption(
    many_images, small_models, tmp_path, sig):
  """SIGTERM (Kubernetes, Slurm, systemd) as Ctrl-C: one line, exit 130,
  every cache file written whole, nothing else written."""
  bn = tmp_path / "bn"
  proc = _popen(_args(many_images, small_models["inception"], bn,
                      tmp_path / "out"), stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True)
  seen = _wait_for(proc, "Bottlenecks (")
  deadline = time.time() + 60
  while not (bn.is_dir() and _cache_files(str(bn))) and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(sig)
  _interrupted(proc, seen)
  _vectors(str(bn))
  assert not _temporary_files(bn)
  assert not os.path.exists(tmp_path / "out")


def test_sigterm_during_training_writes_no_output(many_images, small_models,
                                                  tmp_path):
  bn = tmp_path / "bn"
  warm = helpers.run_cli(_args(many_images, small_models["inception"], bn,
                               tmp_path / "warm"))
  assert warm.returncode == 0, warm.stderr[-2000:]
  proc = _popen(_args(many_images, small_models["inception"], bn,
                      tmp_path / "out", steps=10**7),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  seen = _wait_for(proc, "Images: ")
  time.sleep(1.0)  # Inside the training loop.
  proc.send_signal(signal.SIGTERM)
  _interrupted(proc, seen)
  assert not os.path.exists(tmp_path / "out" / "graph.pb")
  assert not _temporary_files(bn)


def test_flipped_bytes_in_the_index_vectors_are_found_and_rebuilt(
    color_images, small_models, tmp_path):
  """Two bytes flipped in a packed index's vectors: the damaged block is
  read again from the sidecars (or recomputed where one is gone), the
  index rebuilt, and training gets exactly a clean run's numbers."""
  options = ModelOptions(graph=small_models["inception"], tfhub_module="")
  steps = HParams(how_many_training_steps=50)
  config = helpers.run_config(tmp_path, color_images, saved_model_dir="",
                              summaries_dir="", checkpoint_path="")
  clean = pipeline.run(config, steps, options)
  (path,) = [os.path.join(config.bottleneck_dir, n)
             for n in os.listdir(config.bottleneck_dir)
             if n.endswith(cache.index.SUFFIX)]
  with open(path, "rb") as f:
    data = bytearray(f.read())
  header = cache.index._HEADER.unpack_from(data)  # pylint: disable=protected-access
  rows, dim = header[3], header[4]
  _, vectors_at, _ = cache.index._layout(rows, dim)  # pylint: disable=protected-access
  for k in (3, 4 * dim * (rows // 2) + 1):  # Two rows, one byte each.
    data[vectors_at + k] ^= 0xFF
  with open(path, "wb") as f:
    f.write(data)
  # One damaged row's sidecar is gone too: it must be computed again.
  sidecars = _cache_files(config.bottleneck_dir)
  os.remove(os.path.join(config.bottleneck_dir, sorted(sidecars)[0]))
  again = pipeline.run(config, steps, options)
  assert again.bottlenecks_computed == 1
  assert again.bottlenecks_from_cache == clean.bottlenecks_computed - 1
  np.testing.assert_array_equal(again.final_weights, clean.final_weights)
  reopened = cache.PackedIndex.open(config.bottleneck_dir,
                                    os.path.basename(path)[:-len(
                                        cache.index.SUFFIX)], dim)
  assert reopened is not None and not reopened.damaged_rows().any()
  # A clean index is used as it is: nothing read from the sidecars.
  third = pipeline.run(config, steps, options)
  assert third.bottlenecks_computed == 0
