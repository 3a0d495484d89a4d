"""--beam_runner: bottlenecks computed by an Apache Beam pipeline.

Multi-process tests run Beam's DirectRunner with 2 worker processes on local
folders (its workers cannot see this process's ram://); in-process ones use
the DirectRunner in memory.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import cache
from retrain import pipeline
from retrain.config import HParams, ModelOptions
from retrain.errors import UserError
from tests import helpers, messy

beam = helpers.require("apache_beam")

MULTI = "--direct_running_mode=multi_processing --direct_num_workers=2"


_mobilenet = helpers.shared_mobilenet
_vectors = helpers.cached_vectors


# Same images, same model: equal up to float32 rounding. oneDNN picks its
# kernels by batch shape, and the in-process extractor's batch size is
# timed while Beam's is fixed; on an AMD EPYC one image's vector (values
# 0..6) differed by up to 7e-6 between batch sizes (0 on the Intel machines
# measured before).
SAME = 2e-5


def _assert_same_vectors(a, b, atol=SAME):
  va, vb = _vectors(a), _vectors(b)
  assert sorted(va) == sorted(vb) and va
  worst = max(float(np.abs(va[k] - vb[k]).max()) for k in va)
  assert worst <= atol, worst


@pytest.fixture(scope="module")
def dev_caches(shared, tmp_path_factory):
  """The dev flowers cached in this process and by 2 Beam worker
  processes."""
  tmp = tmp_path_factory.mktemp("beam_dev")
  flowers = os.path.join(shared, "datasets", "flower_photos_dev")
  plain = helpers.run_config(tmp / "plain", flowers)
  beamed = helpers.run_config(tmp / "beam", flowers,
                              beam_runner="DirectRunner", beam_options=MULTI)
  options = _mobilenet(shared)
  return (plain, pipeline.cache_bottlenecks(plain, HParams(), options),
          beamed, pipeline.cache_bottlenecks(beamed, HParams(), options),
          options)


def test_two_worker_processes_give_the_in_process_vectors(dev_caches):
  plain, plain_data, beamed, beam_data, _ = dev_caches
  assert beam_data.filled.computed == plain_data.filled.computed == 500
  _assert_same_vectors(plain.bottleneck_dir, beamed.bottleneck_dir)
  # The index the driver built from the workers' packs, row for row.
  np.testing.assert_allclose(np.asarray(beam_data.filled.vectors),
                             np.asarray(plain_data.filled.vectors), atol=SAME)
  # The pipeline's scratch folder is gone; the staged model stays.
  staged = os.listdir(os.path.join(beamed.bottleneck_dir, ".beam"))
  assert len(staged) == 1 and staged[0].endswith(".pb")


def test_a_warm_beam_run_computes_nothing(dev_caches, monkeypatch):
  _, _, beamed, _, options = dev_caches
  from retrain.features import beam_extract
  started = []
  monkeypatch.setattr(beam_extract, "compute",
                      lambda *a, **k: started.append(a))
  data = pipeline.cache_bottlenecks(beamed, HParams(), options)
  assert data.filled.computed == 0 and data.filled.from_cache == 500
  assert not started


@pytest.mark.parametrize("how", ["duplicated", "retried"])
def test_duplicated_and_retried_shards_index_each_vector_once(
    small_models, color_images, tmp_path, monkeypatch, how):
  """Shards of 3 images, each answered twice ("duplicated": as a runner
  that runs a bundle twice), or the first failing once after writing its
  sidecars ("retried": the bundle-based DirectRunner retries its bundle,
  whose retry finds them): every image's vector once, equal to in
  process."""
  from retrain.features import beam_extract
  monkeypatch.setattr(beam_extract, "MAX_SHARD_SIZE", 3)
  write = beam_extract._ExtractShard._write_pack  # pylint: disable=protected-access
  packs, failed = [], set()

  def twice(self, shard, answers):
    write(self, shard, answers)
    write(self, shard, answers)
    packs.append(len(answers.indices))

  def fail_once(self, shard, answers):
    if not failed:
      failed.add(shard)
      raise RuntimeError("a worker lost after writing the sidecars")
    write(self, shard, answers)
    packs.append(len(answers.indices))

  monkeypatch.setattr(beam_extract._ExtractShard, "_write_pack",  # pylint: disable=protected-access
                      twice if how == "duplicated" else fail_once)
  answers = []
  compute = beam_extract.compute

  def recorded(*args, **kwargs):
    for answer in compute(*args, **kwargs):
      answers.append(answer[0])
      yield answer

  monkeypatch.setattr(beam_extract, "compute", recorded)
  options = ModelOptions(graph=small_models["inception"], tfhub_module="")
  plain = pipeline.cache_bottlenecks(
      helpers.run_config(tmp_path / "plain", color_images), HParams(), options)
  runner = "DirectRunner" if how == "duplicated" else "BundleBasedDirectRunner"
  from retrain import checks
  monkeypatch.setattr(checks, "BEAM_RUNNERS", (*checks.BEAM_RUNNERS, runner))
  beamed = pipeline.cache_bottlenecks(
      helpers.run_config(tmp_path / "beam", color_images, beam_runner=runner),
      HParams(), options)
  n = plain.filled.computed
  assert max(packs) == 3 and sum(packs) == n > 3
  assert len(failed) == (how == "retried")
  assert sorted(answers) == list(range(n))  # Each once, none unanswered.
  assert beamed.filled.computed == n and beamed.filled.failures == []
  np.testing.assert_allclose(np.asarray(beamed.filled.vectors),
                             np.asarray(plain.filled.vectors), atol=SAME)
  # The pipeline's scratch folder (shards, packs) is gone.
  assert [f for f in os.listdir(tmp_path / "beam" / "bottlenecks" / ".beam")
          if not f.endswith(".pb")] == []


def test_bad_images_are_skipped_and_reported_as_in_process(shared, tmp_path):
  flowers = os.path.join(shared, "datasets", "flower_photos_dev")
  photos = sorted(os.path.join(flowers, c, n) for c in sorted(os.listdir(
      flowers)) if os.path.isdir(os.path.join(flowers, c))
                  for n in sorted(os.listdir(os.path.join(flowers, c))))
  root = str(tmp_path / "photos")
  good, bad = messy.make_messy_folder(root, photos[::20], huge=False)
  options = _mobilenet(shared)
  plain = pipeline.cache_bottlenecks(
      helpers.run_config(tmp_path / "plain", root), HParams(), options)
  # In memory: worker processes run the same DoFn (dev_caches, and Dask's
  # in tests/test_dask.py on a messy folder too).
  beamed_config = helpers.run_config(tmp_path / "beam", root,
                                     beam_runner="DirectRunner")
  beamed = pipeline.cache_bottlenecks(beamed_config, HParams(), options)
  assert beamed.filled.failures == plain.filled.failures
  assert {os.path.relpath(p, root) for p, _ in beamed.filled.failures} == (
      set(bad))
  assert beamed.filled.computed == plain.filled.computed == len(good)
  _assert_same_vectors(str(tmp_path / "plain" / "bottlenecks"),
                       beamed_config.bottleneck_dir)


def test_a_killed_pipeline_leaves_whole_files_and_the_rerun_computes_the_rest(
    shared, tmp_path):
  flowers = os.path.join(shared, "datasets", "flower_photos_dev")
  model = os.path.join(shared, "models", "mobilenet_v1_025_128",
                       "frozen_graph.pb")
  bottlenecks = tmp_path / "bottlenecks"
  args = [sys.executable, "-m", "retrain", f"--image_dir={flowers}",
          f"--graph={model}", f"--bottleneck_dir={bottlenecks}",
          f"--output_graph={tmp_path / 'out' / 'g.pb'}",
          f"--output_labels={tmp_path / 'out' / 'labels.txt'}",
          "--only_bottlenecks", "--beam_runner=DirectRunner",
          f"--beam_options={MULTI}", "--bottleneck_batch_size=4"]
  proc = subprocess.Popen(args, cwd=helpers.REPO, start_new_session=True,
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL,
                          env=dict(os.environ, PYTHONPATH=helpers.REPO))
  deadline = time.monotonic() + 120
  written = 0
  try:
    while time.monotonic() < deadline and proc.poll() is None:
      written = sum(f.endswith(".bn") for f in helpers.files_under(
          str(bottlenecks)) if os.path.isdir(bottlenecks))
      if written >= 20:
        break
      time.sleep(0.05)
  finally:
    os.killpg(proc.pid, signal.SIGKILL)  # The driver and its workers.
    proc.wait()
  existing = _vectors(str(bottlenecks))  # Every file whole (verify).
  assert 0 < len(existing) < 500, len(existing)
  assert not any(f.endswith(".index") for f in os.listdir(bottlenecks))
  config = helpers.run_config(tmp_path, flowers, beam_runner="DirectRunner")
  data = pipeline.cache_bottlenecks(config, HParams(), _mobilenet(shared))
  assert data.filled.computed == 500 - len(existing)
  assert data.filled.from_cache == len(existing)


def test_augmented_copies_and_cut_activations_go_through_beam_too(
    small_models, color_images, tmp_path):
  """In memory (one process): a fine-tuned run with an augmented copy
  computes every vector in the pipeline, equal to an in-process run's."""
  options = ModelOptions(graph=small_models["inception"], tfhub_module="")
  hparams = HParams(how_many_training_steps=20, fine_tune_layers=1,
                    fine_tune_steps=10)
  common = dict(saved_model_dir="", tflite_output="", summaries_dir="",
                flip_left_right=True, augmentation_copies=1)
  plain = pipeline.run(helpers.run_config(tmp_path / "plain", color_images,
                                          **common), hparams, options)
  config = helpers.run_config(tmp_path / "beam", color_images,
                              beam_runner="DirectRunner", **common)
  beamed = pipeline.run(config, hparams, options)
  tags = {re.search(r"\.(?:jpe?g|png)\.(.+)\.bn$", f).group(1)
          for f in _vectors(config.bottleneck_dir)}
  assert len(tags) == 4  # Model, its copy, the cut, the cut's copy.
  _assert_same_vectors(str(tmp_path / "plain" / "bottlenecks"),
                       config.bottleneck_dir, atol=SAME)
  assert beamed.fine_tune.cut_vectors_computed == (
      plain.fine_tune.cut_vectors_computed) > 0
  np.testing.assert_allclose(beamed.test_probabilities,
                             plain.test_probabilities, atol=1e-4)


def test_bad_beam_flags_are_one_line_errors(tmp_path):
  for args, words in (
      (["--beam_runner=FastRunner"], "--beam_runner=FastRunner: not a runner"),
      (["--beam_options=--direct_num_workers=2"],
       "--beam_options is given without --beam_runner"),
      (["--beam_runner=DirectRunner", "--beam_options='unclosed"],
       "cannot be split")):
    proc = helpers.run_cli([f"--image_dir={tmp_path}", *args])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr


def test_without_beam_installed_the_flag_says_how_to_get_it(monkeypatch,
                                                            tmp_path):
  import importlib.util
  from retrain.checks import check_config
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "apache_beam"
                      else real(name, *a))
  with pytest.raises(UserError, match=r"pip install 'retrain\[beam\]'"):
    check_config(helpers.run_config(tmp_path, str(tmp_path),
                                    beam_runner="DirectRunner"), HParams())


def test_beam_is_not_imported_without_the_flag(small_models, color_images,
                                               tmp_path):
  code = (
      "import sys\n"
      "from retrain import pipeline\n"
      "from retrain.config import HParams, ModelOptions\n"
      "from tests import helpers\n"
      f"config = helpers.run_config({str(tmp_path)!r}, {color_images!r})\n"
      "pipeline.cache_bottlenecks(config, HParams(), ModelOptions(graph="
      f"{small_models['inception']!r}, tfhub_module=''))\n"
      "print('apache_beam' in sys.modules)\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, cwd=helpers.REPO,
                        env=dict(os.environ, PYTHONPATH=helpers.REPO))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("lost", ["pack", "everything"])
def test_vectors_the_pipeline_did_not_report_are_recovered(
    small_models, color_images, tmp_path, monkeypatch, lost):
  """Nothing lost on any runner: a runner that drops a third of the shards'
  answers ("pack": their sidecars are there, no pack names them) or all
  trace of them ("everything": no sidecar either). The driver takes the
  first from their sidecars and computes the others itself: none skipped,
  all equal to in process."""
  from retrain.features import beam_extract
  write = beam_extract._ExtractShard._write_pack  # pylint: disable=protected-access
  lost_rows = []

  def lossy(self, shard, answers):
    with open(shard) as f:
      refs = {row[0]: cache.ImageRef(*row[1:]) for row in json.load(f)}
    kept = beam_extract.Answers()
    for index, vector in zip(answers.indices, answers.vectors):
      if index % 3:
        kept.vector(index, vector)
        continue
      lost_rows.append(index)
      if lost == "everything":
        os.remove(self.store.path_for(refs[index]))
    write(self, shard, kept)

  monkeypatch.setattr(beam_extract._ExtractShard, "_write_pack", lossy)  # pylint: disable=protected-access
  options = ModelOptions(graph=small_models["inception"], tfhub_module="")
  plain = pipeline.cache_bottlenecks(
      helpers.run_config(tmp_path / "plain", color_images), HParams(), options)
  beamed_config = helpers.run_config(tmp_path / "beam", color_images,
                                     beam_runner="DirectRunner")
  beamed = pipeline.cache_bottlenecks(beamed_config, HParams(), options)
  assert len(lost_rows) >= 10
  assert beamed.filled.failures == plain.filled.failures == []
  assert beamed.filled.computed == plain.filled.computed
  np.testing.assert_allclose(np.asarray(beamed.filled.vectors),
                             np.asarray(plain.filled.vectors), atol=SAME)
  # Every image has its sidecar now, so the next run reads them all.
  again = pipeline.cache_bottlenecks(beamed_config, HParams(), options)
  assert again.filled.computed == 0


def test_several_models_go_through_beam(small_models, color_images,
                                        tmp_path):
  """--graph=A --tfhub_module=B with --beam_runner: each model's vectors
  (the one at another input size through its resizing graph) computed by
  Beam equal the in-process ones, cached under each model's tag."""
  options = (ModelOptions(graph=small_models["inception"], tfhub_module=""),
             ModelOptions(tfhub_module=small_models["hub"]))
  plain = helpers.run_config(tmp_path / "plain", color_images)
  beamed = helpers.run_config(tmp_path / "beam", color_images,
                              beam_runner="DirectRunner")
  a = pipeline.cache_bottlenecks(plain, HParams(), options)
  b = pipeline.cache_bottlenecks(beamed, HParams(), options)
  images = sum(a.sizes.values())
  assert images and a.filled.computed == b.filled.computed == 2 * images
  _assert_same_vectors(plain.bottleneck_dir, beamed.bottleneck_dir)
  for cat, s in a.sets.items():
    np.testing.assert_allclose(s.take(np.arange(len(s))),
                               b.sets[cat].take(np.arange(len(s))),
                               atol=SAME * 10)


def test_beam_workers_write_the_photo_statistics(shared, tmp_path):
  """With the audit on, the workers write each photo's statistics beside
  its vector (sidecars: the driver, when it computes them, keeps them in
  the index only), equal to the in-process ones; the driver decodes none."""
  from retrain.features import bottlenecks  # pylint: disable=g-import-not-at-top
  from retrain.features.model import load_feature_extractor  # pylint: disable=g-import-not-at-top
  flowers = os.path.join(shared, "datasets", "flower_photos_dev")
  plain = helpers.run_config(tmp_path / "plain", flowers, audit=True)
  beamed = helpers.run_config(tmp_path / "beam", flowers, audit=True,
                              beam_runner="DirectRunner", beam_options=MULTI)
  options = _mobilenet(shared)
  found = {}
  for config in (plain, beamed):
    data = pipeline.cache_bottlenecks(config, HParams(), options)
    assert len(data.photo_stats.paths) == 500
    found[config.bottleneck_dir] = dict(zip(data.photo_stats.paths,
                                            data.photo_stats.values))
  sidecars = [p for p in helpers.files_under(beamed.bottleneck_dir)
              if ".photostats" in p and p.endswith(".bn")]
  assert len(sidecars) == 500
  assert not [p for p in helpers.files_under(plain.bottleneck_dir)
              if ".photostats" in p and p.endswith(".bn")]
  a, b = found[plain.bottleneck_dir], found[beamed.bottleneck_dir]
  assert sorted(a) == sorted(b)
  for path in a:
    np.testing.assert_allclose(a[path], b[path], rtol=1e-6, atol=1e-6)
  fx = load_feature_extractor(options, beamed.bottleneck_dir)
  cached = bottlenecks.photo_statistics(
      pipeline.images.list_images(flowers, 10, 10), fx, beamed,
      read_only=True)
  assert len(cached.paths) == 500
