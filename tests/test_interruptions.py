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


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
  root = tmp_path_factory.mktemp("many")
  return fixtures.make_color_images(str(root), per_class=200, size=(60, 80))


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
  assert len(vectors) == 600
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
  for _ in range(20):
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
      kills_while_extracting += len(_cache_files(bn)) < 600
      proc.send_signal(signal.SIGKILL)
    proc.wait()
    _vectors(bn)  # Every file present is complete.
  assert kills_while_extracting >= 15
  present = len(_cache_files(bn))
  config = helpers.run_config(tmp_path, many_images, bottleneck_dir=bn,
                              saved_model_dir="", summaries_dir="",
                              checkpoint_path="")
  result = pipeline.run(config, HParams(how_many_training_steps=1),
                        ModelOptions(graph=small_models["inception"],
                                     tfhub_module=""))
  assert result.bottlenecks_from_cache == present
  assert result.bottlenecks_computed == 600 - present
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
                 "report.html",
                 "confusion_matrix.png"} - (
                     set() if _has_matplotlib() else {"confusion_matrix.png"})
  assert not [f for f in helpers.files_under(str(out)) if f.endswith(".tmp")]
