"""The benchmark scripts still run (tiny settings; numbers not asserted)."""

import os
import re
import subprocess
import sys

from tests import helpers


def _run(script, args):
  env = dict(os.environ, PYTHONPATH=helpers.REPO)
  proc = subprocess.run([sys.executable, os.path.join(helpers.REPO,
                                                      "benchmarks", script),
                         *args], capture_output=True, text=True, env=env,
                        cwd=helpers.REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_augmentation_benchmark_prints_its_table(shared):
  out = _run("augmentation.py", ["--steps=20", "--classic_steps=1",
                                 "--copies=1"])
  assert "cached augmentation, 1 copies (cold cache)" in out
  assert "faster than on-the-fly distortion" in out


def test_beam_benchmark_prints_every_way_with_equal_vectors(shared):
  helpers.require("apache_beam")
  # Dask: tests/test_dask.py; 1 worker process: as 2, with less to show.
  out = _run("beam.py", ["--max_images=40", "--nodask", "--noone_worker"])
  for way in ("in process", "DirectRunner, in memory",
              "DirectRunner, 2 worker processes"):
    assert f"| {way} " in out
    found = re.search(re.escape(way) + r": 40 vectors, largest difference "
                      r"from in process (\S+)\n", out)
    # Float32 rounding only: see tests/test_beam.py's SAME.
    assert found and float(found.group(1)) <= 2e-5, out


def test_fine_tune_benchmark_prints_both_stages(shared, tmp_path):
  out = _run("fine_tune.py", ["--models=mobilenet_v1_025_128",
                              "--datasets=flower_photos_dev",
                              "--variants=plain", "--folds=2",
                              "--keras_epochs=0", f"--work_dir={tmp_path}"])
  assert "| head only % | fine-tuned % |" in out, out
  assert "| mobilenet_v1_025_128 | flower_photos_dev | plain   | 500 " in out


def test_head_quality_benchmark_prints_every_column(shared, tmp_path):
  helpers.require("sklearn")
  out = _run("head_quality.py", ["--models=mobilenet_v1_025_128",
                                 "--datasets=flower_photos_dev", "--folds=2",
                                 "--stage2", f"--work_dir={tmp_path}"])
  assert ("| stage 1 - LR | stage 1 - LR training only | stage 2 - stage 1 "
          "| stage 2 kept |") in out, out
  row = re.search(r"\| flower_photos_dev +\| mobilenet_v1_025_128 +\| 500 +"
                  r"((?:\| [0-9.]+ +){5})(?:\| [-+][0-9.]+ +){3}"
                  r"\| [0-2]/2 ", out)
  assert row, out
  # Each fold's test accuracies are real: between chance and 100%.
  assert all(20 < float(v) <= 100 for v in row.group(1).split("|")[1:]), out


def test_head_quality_benchmark_scores_a_combination(shared, tmp_path):
  """A+B: one classifier on two models, scored like one model."""
  helpers.require("sklearn")
  out = _run("head_quality.py", [
      "--models=mobilenet_v1_025_224+mobilenet_v1_025_128",
      "--datasets=flower_photos_dev", "--folds=2", f"--work_dir={tmp_path}"])
  row = re.search(r"\| flower_photos_dev +\| mobilenet_v1_025_224\+"
                  r"mobilenet_v1_025_128 +\| 500 +((?:\| [0-9.]+ +){4})", out)
  assert row, out
  assert all(60 < float(v) <= 100 for v in row.group(1).split("|")[1:]), out


def test_unknown_benchmark_scores_every_way(shared, tmp_path):
  out = _run("unknown.py", ["--models=mobilenet_v1_025_128", "--folds=2",
                            f"--work_dir={tmp_path}"])
  rows = re.findall(r"\| mobilenet_v1_025_128 \| (\S+) +\| \S+ +\| \d+ +\| "
                    r"([^|]+?) +\| ([0-9.]+) \| ([0-9.]+) +\| ([0-9.]+) ",
                    out)
  assert len(rows) == 2 * 8, out
  for _, _, auroc, rejected, known in rows:
    assert 0.5 < float(auroc) <= 1 and 0 <= float(rejected) <= 100
    assert float(known) <= 30
  best = {k: float(a) for k, name, a, _, _ in rows
          if name.startswith("cosine to nearest k=5 (all")}
  assert min(best.values()) > 0.9, out
  built = {k: (float(r), float(kn)) for k, name, _, r, kn in rows
           if name.startswith("the unknown class as built")}
  assert len(built) == 2 and all(r > 50 for r, _ in built.values()), out


def test_exports_benchmark_prints_every_export(shared, tmp_path):
  out = _run("exports.py", [f"--work_dir={tmp_path}"])
  for name in ("frozen graph", "SavedModel", "TFLite none", "TFLite dynamic",
               "TFLite int8", "ONNX (ONNX Runtime, Pillow)"):
    assert f"| {name} " in out


def test_preprocessing_benchmark_compares_fast_with_exact(shared):
  out = _run("preprocessing.py", ["--limit=30", "--upscale=2", "--folds=2",
                                  "--steps=20"])
  for name in ("| dev photos  ", "| dev photos x2 (camera-sized JPEGs)"):
    assert name in out
  assert out.count("same predictions") == 2


def test_scaling_benchmark_prints_every_row(shared, tmp_path):
  out = _run("scaling.py", ["--sizes=20", "--cached=60",
                            f"--work_dir={tmp_path}"])
  assert "| extract 20 images" in out
  for what in ("from sidecars (writes the index)", "from the index",
               "from the index, on disk (--max_in_memory_mb=1)"):
    assert f"60 cached bottlenecks {what}" in out


def test_speed_benchmark_prints_every_row(shared):
  # 80 photos: enough training and validation images (50) to search.
  out = _run("speed.py", ["--max_images=80", "--forward_batch_sizes=1,8"])
  for row in ("| raw forward, pre-decoded batches of 1 ",
              "| raw forward, pre-decoded batches of 8 ",
              "| retrain extraction, steady state (batch ",
              "| shared-core bound", "| whole command, warm cache",
              "| cold command: extraction ", "| cold command: search ",
              "| cold command: training ", "| cold command / floor "):
    assert row in out, out
  assert "80 images" in out


def test_search_benchmark_prints_new_and_old(shared, tmp_path):
  out = _run("search.py", ["--models=mobilenet_v1_025_128",
                           "--datasets=flower_photos_dev",
                           f"--work_dir={tmp_path}", "--synthetic_images=200",
                           "--old_steps=50"])
  assert re.search(r"\| flower_photos_dev, mobilenet_v1_025_128 +\| 500 +"
                   r"\| 256 +\| 5 +\| [\d.]+ s", out), out
  assert re.search(r"\| synthetic Inception-sized +\| 200 +\| 2048 +\| 5 +\|",
                   out), out
  assert "5-fold cross-validation" in out


def test_audit_benchmark_measures_photo_quality(shared, tmp_path):
  out = _run("audit.py", ["--only_photo_quality", f"--work_dir={tmp_path}"])
  rows = re.findall(r"\| (\w+) +\| (\d+) +\| ([0-9.]+) \(\d+\) +\| "
                    r"([0-9.]+|-) \(\d+\)", out)
  assert [r[0] for r in rows] == list(
      __import__("retrain.audit.quality", fromlist=["KINDS"]).KINDS), out
  for kind, _, recall, _ in rows:
    assert float(recall) >= 0.8, (kind, out)
  assert "ratio" in out and "cats_dogs_small" in out
