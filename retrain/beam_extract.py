"""Bottlenecks computed by an Apache Beam pipeline (--beam_runner).

The same work as the in-process extractor (extract.BottleneckExtractor),
spread over Beam workers:

  shards of the image list -> images -> Reshuffle
    -> read, skip what is cached, decode (as training does)
    -> RunInference(GraphModelHandler: the same frozen GraphDef, batched)
    -> sidecar files, in the cache's format, written atomically
  images that cannot be used -> one small record each, read by the driver

The driver (bottlenecks._fill) then indexes the sidecars and trains as
without Beam. Everything the workers read and write goes through cache.fs,
so a cache on gs:// works on Dataflow; the model is staged as a file in the
cache folder (<bottleneck_dir>/.beam/<tag>.pb) rather than pickled into the
pipeline. Workers import this module by name: they need the installed
`retrain` package (pip install '.[beam]'; --setup_file on Dataflow).

Importing this module imports Apache Beam; nothing else in retrain does.
"""

import dataclasses
import hashlib
import json
import shlex
import uuid
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import logging as std_logging
import os

from absl import logging


def _quiet_local_beam() -> bool:
  """On a local run without --verbosity=1, Beam's start-up notes (a
  PrismRunner download tried and given up offline, optional Google Cloud
  clients missing, each worker's set-up) are hidden; True if so."""
  if logging.get_verbosity() >= logging.DEBUG:
    return False
  std_logging.getLogger("apache_beam").setLevel(std_logging.ERROR)
  std_logging.getLogger().addFilter(_drop_beam_notes)
  return True


def _drop_beam_notes(record: std_logging.LogRecord) -> bool:
  """Drops Beam's notes logged on the root logger (below ERROR)."""
  return record.levelno >= std_logging.ERROR or (
      f"{os.sep}apache_beam{os.sep}" not in record.pathname)


_QUIET = _quiet_local_beam()

import apache_beam as beam  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
from apache_beam.ml.inference.base import (KeyedModelHandler, ModelHandler,
                                           PredictionResult, RunInference)
from apache_beam.options.pipeline_options import PipelineOptions

import cache
from cache import fs

# CNN batch size without --bottleneck_batch_size (RunInference batches up
# to this many; the in-process timing tuner does not run on workers).
DEFAULT_BATCH_SIZE = 32

# Images per shard of the list the driver writes for the workers.
SHARD_SIZE = 500

_FAILED = "failed"
_NAMESPACE = "retrain"


@dataclasses.dataclass(frozen=True)
class Job:
  """What workers need to compute one cache tag's vectors: small, picklable
  (the model travels as a staged file, not inside the job)."""
  root: str  # --bottleneck_dir
  tag: str  # The cache tag written.
  graph_path: str  # The staged frozen GraphDef.
  fx: object  # model.FeatureExtractor without its graph_def.
  batch_size: int
  distortions: Optional[object] = None  # preprocess.Distortions
  copy: int = 0
  random_seed: int = 0


def _worker_setup():
  """TensorFlow imported quietly (as the command line does) and every TF
  filesystem served; returns the tensorflow module. For worker processes."""
  from retrain import cli  # pylint: disable=g-import-not-at-top
  cli.quiet_tensorflow(show_startup=not _QUIET)
  from retrain import storage  # pylint: disable=g-import-not-at-top,unused-import
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


class _Model:
  """The CNN in a session: float32 [n, H, W, 3] -> [n, D]. A class, not a
  tuple, because RunInference keeps a weak reference to it."""

  def __init__(self, fx):
    tf = _worker_setup()
    from retrain.model import build_bottleneck  # pylint: disable=g-import-not-at-top
    tf1 = tf.compat.v1
    self.graph = tf.Graph()
    with self.graph.as_default():
      self.images = tf1.placeholder(tf.float32, [None, *fx.input_size, 3])
      self.bottleneck = build_bottleneck(fx, self.images)
    self.graph.finalize()
    self.session = tf1.Session(graph=self.graph)

  def run(self, images: np.ndarray) -> np.ndarray:
    return self.session.run(self.bottleneck, {self.images: images})


class GraphModelHandler(ModelHandler):
  """RunInference over a frozen GraphDef: decoded images in, vectors out."""

  def __init__(self, job: Job):
    super().__init__(min_batch_size=1, max_batch_size=job.batch_size)
    self.job = job

  def load_model(self) -> _Model:
    tf = _worker_setup()
    graph_def = tf.compat.v1.GraphDef.FromString(
        fs.for_path(self.job.graph_path).read_bytes(self.job.graph_path))
    return _Model(dataclasses.replace(self.job.fx, graph_def=graph_def))

  def run_inference(self, batch: Sequence[np.ndarray], model: _Model,
                    inference_args=None) -> List[PredictionResult]:
    vectors = model.run(np.stack(batch))
    # The image is not kept with its vector (example=None): memory.
    return [PredictionResult(None, v) for v in vectors]

  def get_metrics_namespace(self) -> str:
    return _NAMESPACE


def _ref_row(index: int, ref: cache.ImageRef) -> list:
  return [index, ref.path, ref.class_dir, ref.relpath]


class _ReadShard(beam.DoFn):
  """A shard file of the list -> (index, ImageRef) for each image."""

  def setup(self) -> None:
    _worker_setup()

  def process(self, path: str) -> Iterator[Tuple[int, cache.ImageRef]]:
    for index, *ref in json.loads(fs.for_path(path).read_bytes(path)):
      yield index, cache.ImageRef(*ref)


class _Decode(beam.DoFn):
  """(index, ref) -> ((ref, fingerprint), image), or a failure; nothing for
  an image whose valid sidecar exists already."""

  def __init__(self, job: Job):
    self.job = job
    self.decoder = None
    self.store = None

  def setup(self) -> None:
    _worker_setup()
    from retrain.extract import ImageDecoder  # pylint: disable=g-import-not-at-top
    self.decoder = ImageDecoder(self.job.fx.input_size, self.job.distortions,
                                self.job.fx.preprocessing)
    self.store = cache.BottleneckCache(self.job.root, self.job.tag)

  def process(self, item):
    from retrain.extract import augmentation_seed  # pylint: disable=g-import-not-at-top
    _, ref = item
    try:
      fingerprint = cache.SourceFingerprint.of(ref.path)
    except OSError as e:
      yield beam.pvalue.TaggedOutput(_FAILED, (ref.path,
                                               f"cannot read it ({e.strerror})"))
      return
    if self.store.load(ref, fingerprint) is not None:
      beam.metrics.Metrics.counter(_NAMESPACE, "cached").inc()
      return
    seed = (augmentation_seed(self.job.random_seed,
                              f"{ref.class_dir}/{ref.relpath}", self.job.copy)
            if self.job.distortions else (0, 0))
    image, error = self.decoder.decode(ref.path, seed)
    if image is None:
      yield beam.pvalue.TaggedOutput(_FAILED, (ref.path, error))
    else:
      yield (ref, tuple(fingerprint)), image

  def teardown(self) -> None:
    if self.decoder is not None:
      self.decoder.close()


class _WriteVector(beam.DoFn):
  """((ref, fingerprint), PredictionResult) -> the image's sidecar file."""

  def __init__(self, job: Job):
    self.job = job

  def setup(self) -> None:
    _worker_setup()

  def process(self, item) -> None:
    (ref, fingerprint), result = item
    cache.BottleneckCache(self.job.root, self.job.tag).store(
        ref, np.asarray(result.inference, np.float32),
        cache.SourceFingerprint(*fingerprint))
    beam.metrics.Metrics.counter(_NAMESPACE, "computed").inc()


class _WriteFailure(beam.DoFn):
  """(path, reason) -> a record in the run folder, for the driver."""

  def __init__(self, folder: str):
    self.folder = folder

  def setup(self) -> None:
    _worker_setup()

  def process(self, failure: Tuple[str, str]) -> None:
    name = hashlib.sha1(failure[0].encode("utf-8")).hexdigest() + ".json"
    path = fs.join(self.folder, name)
    fs.for_path(path).write_atomic(path, json.dumps(list(failure)).encode())


def stage_model(fx, root: str) -> str:
  """The frozen GraphDef of `fx` as a file under the cache folder, written
  once per model tag; returns its path."""
  path = fs.join(root, ".beam", f"{fx.tag}.pb")
  store = fs.for_path(path)
  data = fx.graph_def.SerializeToString()
  if not store.exists(path) or store.stat(path)[0] != len(data):
    store.write_atomic(path, data)
  return path


def pipeline_options(runner: str, options: str) -> PipelineOptions:
  """Beam's options from --beam_runner and the --beam_options string.

  On the DirectRunner, unless --verbosity=1 or the options say otherwise,
  worker processes log errors only (TensorFlow's and Beam's start-up
  notes, once per worker, are not the user's business).
  """
  args = shlex.split(options or "")
  if runner == "DirectRunner" and _QUIET:
    if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
      args.append("--default_sdk_harness_log_level=ERROR")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return PipelineOptions(args + [f"--runner={runner}"])


def compute(refs: Sequence[cache.ImageRef], fx, tag: str, root: str,
            runner: str,
            options: str, batch_size: int, distortions=None, copy: int = 0,
            random_seed: int = 0) -> Dict[str, str]:
  """Runs the pipeline over `refs`; their sidecars are then in the cache
  (or, for images that cannot be used, why: the dict returned, image path
  -> reason). `tag`: the cache tag to write (the
  model's, or an augmented copy's)."""
  run = fs.join(root, ".beam", f"{tag}-{uuid.uuid4().hex[:12]}")
  store = fs.for_path(run)
  job = Job(root, tag, stage_model(fx, root),
            dataclasses.replace(fx, graph_def=None), batch_size, distortions,
            copy, random_seed)
  shards = []
  for start in range(0, len(refs), SHARD_SIZE):
    path = fs.join(run, "list", f"{start // SHARD_SIZE:08d}.json")
    store.write_atomic(path, json.dumps(
        [_ref_row(i, refs[i])
         for i in range(start, min(start + SHARD_SIZE, len(refs)))]).encode())
    shards.append(path)
  failures_dir = fs.join(run, "failed")
  logging.info("Beam: %d images in %d shards on %s (%s)", len(refs),
               len(shards), runner, options or "default options")
  try:
    p = beam.Pipeline(options=pipeline_options(runner, options))
    decoded = (p | "Shards" >> beam.Create(shards)
               | "List" >> beam.ParDo(_ReadShard())
               | "Spread" >> beam.Reshuffle()
               | "Decode" >> beam.ParDo(_Decode(job)).with_outputs(
                   _FAILED, main="images"))
    _ = (decoded.images
         | "CNN" >> RunInference(KeyedModelHandler(GraphModelHandler(job)))
         | "Write" >> beam.ParDo(_WriteVector(job)))
    _ = decoded[_FAILED] | "Failed" >> beam.ParDo(
        _WriteFailure(failures_dir))
    result = p.run()
    result.wait_until_finish()
    failures = {}
    if store.exists(failures_dir):
      for name in store.listdir(failures_dir):
        path, reason = json.loads(store.read_bytes(
            fs.join(failures_dir, name)))
        failures[path] = reason
  finally:
    _remove_tree(run)
  return failures


def _remove_tree(folder: str) -> None:
  try:
    if fs.for_path(folder).local:
      import shutil  # pylint: disable=g-import-not-at-top
      shutil.rmtree(folder, ignore_errors=True)
    else:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      if tf.io.gfile.exists(folder):
        tf.io.gfile.rmtree(folder)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("Could not remove %s: %s", folder, e)
