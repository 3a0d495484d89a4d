"""--beam_runner=DaskRunner on a Dask cluster the tests start on loopback.

One cluster of 2 worker processes (1 thread each) serves the module, as
`dask scheduler` and two `dask worker` processes on a user's machines would;
the workers import TensorFlow and load the model once, on their first
shard. One test starts retrain without an address, which starts (and stops)
its own local cluster.
"""

import os
import threading
import time

import numpy as np
import pytest

from retrain import pipeline
from retrain.config import HParams
from tests import helpers, messy

beam = helpers.require("apache_beam")
distributed = helpers.require("distributed")

# A fixed batch size on both sides: the same batches, so the same floats.
BATCH = 32
SAME = 2e-5  # Batches of other shapes (a retried shard): see test_beam.


_mobilenet = helpers.shared_mobilenet
_sidecars = helpers.cached_vectors


@pytest.fixture(scope="module")
def cluster():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  local = distributed.LocalCluster(
      n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
      dashboard_address=None, silence_logs=40)
  client = distributed.Client(local)
  yield local, client
  client.close()
  local.close()


@pytest.fixture(scope="module")
def flowers(shared):
  return os.path.join(shared, "datasets", "flower_photos_dev")


@pytest.fixture(scope="module")
def in_process(shared, flowers, tmp_path_factory):
  config = helpers.run_config(tmp_path_factory.mktemp("plain"), flowers,
                              bottleneck_batch_size=BATCH)
  return config, pipeline.cache_bottlenecks(config, HParams(),
                                            _mobilenet(shared))


def _dask_config(tmp, image_dir, cluster, **overrides):
  address = cluster[0].scheduler_address
  values = dict(beam_runner="DaskRunner",
                beam_options=f"--dask_client_address={address}",
                bottleneck_batch_size=BATCH)
  values.update(overrides)
  return helpers.run_config(tmp, image_dir, **values)


@pytest.fixture(scope="module")
def on_dask(shared, flowers, cluster, tmp_path_factory):
  config = _dask_config(tmp_path_factory.mktemp("dask"), flowers, cluster)
  return config, pipeline.cache_bottlenecks(config, HParams(),
                                            _mobilenet(shared))


def test_dask_workers_compute_the_in_process_vectors(in_process, on_dask):
  (plain, plain_data), (dask_config, dask_data) = in_process, on_dask
  assert dask_data.filled.computed == plain_data.filled.computed == 500
  assert dask_data.filled.failures == []
  a, b = _sidecars(plain.bottleneck_dir), _sidecars(dask_config.bottleneck_dir)
  assert sorted(a) == sorted(b) and len(a) == 500
  # Same batches of the same images: difference 0.
  assert max(float(np.abs(a[k] - b[k]).max()) for k in a) == 0.0
  np.testing.assert_array_equal(np.asarray(dask_data.filled.vectors),
                                np.asarray(plain_data.filled.vectors))
  # The pipeline's scratch folder is gone; the staged model stays.
  staged = os.listdir(os.path.join(dask_config.bottleneck_dir, ".beam"))
  assert len(staged) == 1 and staged[0].endswith(".pb")


def test_a_warm_dask_run_starts_no_pipeline(shared, on_dask, monkeypatch):
  config, _ = on_dask
  from retrain.features import beam_extract
  started = []
  monkeypatch.setattr(beam_extract, "compute",
                      lambda *a, **k: started.append(a))
  data = pipeline.cache_bottlenecks(config, HParams(), _mobilenet(shared))
  assert data.filled.computed == 0 and data.filled.from_cache == 500
  assert not started


def test_bad_images_are_reported_as_in_process(shared, flowers, cluster,
                                               tmp_path):
  photos = sorted(os.path.join(flowers, c, n) for c in sorted(os.listdir(
      flowers)) if os.path.isdir(os.path.join(flowers, c))
                  for n in sorted(os.listdir(os.path.join(flowers, c))))
  root = str(tmp_path / "photos")
  good, bad = messy.make_messy_folder(root, photos[::20], huge=False)
  options = _mobilenet(shared)
  plain = pipeline.cache_bottlenecks(
      helpers.run_config(tmp_path / "plain", root), HParams(), options)
  dasked = pipeline.cache_bottlenecks(
      _dask_config(tmp_path / "dask", root, cluster), HParams(), options)
  assert dasked.filled.failures == plain.filled.failures
  assert {os.path.relpath(p, root) for p, _ in dasked.filled.failures} == (
      set(bad))
  assert dasked.filled.computed == plain.filled.computed == len(good)


def test_a_worker_killed_mid_run_loses_nothing(shared, flowers, cluster,
                                               in_process, tmp_path):
  """kill -9 of a worker process while it computes a shard, after the first
  sidecars appear: Dask restarts it and runs its shard again, which finds
  the sidecars the killed attempt wrote. Every vector arrives, none is
  skipped, all equal to in process."""
  local, client = cluster
  config = _dask_config(tmp_path, flowers, cluster, bottleneck_batch_size=4)
  result, error = [], []

  def run():
    try:
      result.append(pipeline.cache_bottlenecks(config, HParams(),
                                               _mobilenet(shared)))
    except BaseException as e:  # pylint: disable=broad-except
      error.append(e)

  before = client.run(os.getpid)
  thread = threading.Thread(target=run)
  thread.start()
  killed = None
  deadline = time.monotonic() + 300
  while killed is None and time.monotonic() < deadline and thread.is_alive():
    written = (len(_sidecars(config.bottleneck_dir))
               if os.path.isdir(config.bottleneck_dir) else 0)
    busy = [w for w, tasks in client.processing().items() if tasks]
    if written >= 20 and busy:
      killed = before[busy[0]]
      os.kill(killed, 9)
    time.sleep(0.05)
  thread.join(600)
  assert killed is not None, "no worker was busy after the first sidecars"
  assert not error, error
  assert killed not in client.run(os.getpid).values()  # Restarted.
  data = result[0]
  assert data.filled.failures == []
  assert data.filled.computed == 500
  plain_config, plain_data = in_process
  a, b = _sidecars(plain_config.bottleneck_dir), _sidecars(
      config.bottleneck_dir)
  assert sorted(a) == sorted(b)
  assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= SAME
  np.testing.assert_allclose(np.asarray(data.filled.vectors),
                             np.asarray(plain_data.filled.vectors), atol=SAME)


def test_without_an_address_retrain_starts_a_local_cluster(shared, tmp_path):
  """The command line as a user types it: one pass over a few photos on a
  cluster of its own, quietly."""
  photos = tmp_path / "photos"
  flowers = os.path.join(shared, "datasets", "flower_photos_dev")
  for c in ("daisy", "roses"):
    os.makedirs(photos / c)
    for n in sorted(os.listdir(os.path.join(flowers, c)))[:12]:
      os.symlink(os.path.join(flowers, c, n), photos / c / n)
  proc = helpers.run_cli([
      f"--image_dir={photos}", f"--graph={_mobilenet(shared).graph}",
      f"--bottleneck_dir={tmp_path / 'bn'}",
      f"--output_graph={tmp_path / 'out' / 'g.pb'}",
      f"--output_labels={tmp_path / 'out' / 'labels.txt'}",
      "--only_bottlenecks", "--beam_runner=DaskRunner"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Dask: starting a local cluster" in proc.stderr
  assert "Bottlenecks: 0 from cache, 24 computed, 0 skipped" in proc.stderr
  # Beam's, Dask's and TensorFlow's start-up notes stay hidden.
  for noise in ("nanny", "scheduler.py", "cudart", "apitools"):
    assert noise not in proc.stderr, proc.stderr
  assert len(_sidecars(str(tmp_path / "bn"))) == 24
