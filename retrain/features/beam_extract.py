"""Bottlenecks computed by an Apache Beam pipeline (--beam_runner).

The same work as the in-process extractor (extract.BottleneckExtractor),
spread over Beam workers:

  shards of the image list -> images -> Reshuffle
    -> read, skip what is cached, decode (as training does; a thread pool
       per worker process, as in process)
    -> RunInference(GraphModelHandler: the same frozen GraphDef, batched)
    -> sidecar files, in the cache's format, written atomically,
       and pack files of up to PACK_SIZE (index, vector) rows for the driver
  images that cannot be used -> one small record each, read by the driver

The driver (bottlenecks._fill) then indexes the packs' vectors (a few
reads, not one per image, which matters on an object store) and trains as
without Beam. Everything the workers read and write goes through cache.fs,
so a cache on gs:// works on Dataflow; the model is staged as a file in the
cache folder (<bottleneck_dir>/.beam/<tag>.pb) rather than pickled into the
pipeline. Workers import this module by name: they need the installed
`retrain` package (pip install '.[beam]'; --setup_file on Dataflow).

Importing this module imports Apache Beam; nothing else in retrain does.
"""

import collections
import concurrent.futures
import dataclasses
import io
import json
import shlex
import sys
import threading
import uuid
from typing import Iterator, List, Optional, Sequence, Tuple

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
from apache_beam.transforms.window import GlobalWindows

import cache
from cache import fs

# CNN batch size without --bottleneck_batch_size (RunInference batches up
# to this many; the in-process timing tuner does not run on workers).
DEFAULT_BATCH_SIZE = 32

# Vectors per pack file written by a worker for the driver (at most).
PACK_SIZE = 1000

# Images per shard of the list the driver writes for the workers.
SHARD_SIZE = 500

_FAILED = "failed"
_IMAGE = "image"
_NAMESPACE = "retrain"

# Per worker process: the threads that read and decode images for every
# _Decode instance in it (a runner may run several bundles at once), two
# per core as in the in-process extractor.
DECODE_THREADS = 2 * (os.cpu_count() or 1)
_decode_pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
_decode_pool_lock = threading.Lock()


def _shared_decode_pool() -> concurrent.futures.ThreadPoolExecutor:
  global _decode_pool
  with _decode_pool_lock:
    if _decode_pool is None:
      _decode_pool = concurrent.futures.ThreadPoolExecutor(
          DECODE_THREADS, thread_name_prefix="retrain-decode")
    return _decode_pool


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


_setup_lock = threading.Lock()


def _worker_setup():
  """TensorFlow imported quietly (as the command line does) and every TF
  filesystem served; returns the tensorflow module. For worker processes,
  where each DoFn's setup calls it, and the model's loading thread (the
  first call does the work, the others wait for it)."""
  with _setup_lock:
    first = sys.modules.get("tensorflow") is None
    from retrain import tfimport  # pylint: disable=g-import-not-at-top
    tfimport.quiet_tensorflow(show_startup=not _QUIET)
    from retrain.features import storage  # pylint: disable=g-import-not-at-top,unused-import
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if first:
      tfimport.freeze_imports()  # The worker exits 0.6 s sooner.
  return tf


class _Model:
  """The CNN in a session: float32 [n, H, W, 3] -> [n, D]. A class, not a
  tuple, because RunInference keeps a weak reference to it.

  Loaded on a thread, as the in-process extractor does: the graph is read
  and built and its first run (where TensorFlow optimizes it) done while
  the worker decodes the first images; run() waits for it.
  """

  def __init__(self, job: Job):
    self._error: Optional[BaseException] = None
    self._loaded = threading.Thread(target=self._load, args=(job,),
                                    daemon=True)
    self._loaded.start()

  def _load(self, job: Job) -> None:
    try:
      tf = _worker_setup()
      from retrain.features.model import build_bottleneck  # pylint: disable=g-import-not-at-top
      tf1 = tf.compat.v1
      fx = dataclasses.replace(job.fx, graph_def=tf1.GraphDef.FromString(
          fs.for_path(job.graph_path).read_bytes(job.graph_path)))
      self.graph = tf.Graph()
      with self.graph.as_default():
        self.images = tf1.placeholder(tf.float32, [None, *fx.input_size, 3])
        self.bottleneck = build_bottleneck(fx, self.images)
      self.graph.finalize()
      self.session = tf1.Session(graph=self.graph)
    except BaseException as e:  # pylint: disable=broad-except
      self._error = e  # Raised by run(), in the bundle.
      return
    try:
      self.session.run(self.bottleneck, {self.images: np.zeros(
          [job.batch_size, *fx.input_size, 3], np.float32)})
    except tf.errors.OpError:
      pass  # A real failure shows on the first real batch.

  def run(self, images: np.ndarray) -> np.ndarray:
    self._loaded.join()
    if self._error is not None:
      raise self._error
    return self.session.run(self.bottleneck, {self.images: images})


class GraphModelHandler(ModelHandler):
  """RunInference over a frozen GraphDef: decoded images in, vectors out."""

  def __init__(self, job: Job):
    super().__init__(min_batch_size=job.batch_size,
                     max_batch_size=job.batch_size)
    self.job = job

  def load_model(self) -> _Model:
    return _Model(self.job)

  def run_inference(self, batch: Sequence[np.ndarray], model: _Model,
                    inference_args=None) -> List[PredictionResult]:
    vectors = model.run(np.stack(batch))
    # The image is not kept with its vector (example=None): memory.
    return [PredictionResult(None, v) for v in vectors]

  def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
    # For Beam's byte counters; its default pickles the whole batch.
    return sum(image.nbytes for image in batch)

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
  """(index, ref) -> ((index, ref, fingerprint), image), or a failure
  (index, path, reason); nothing for an image whose valid sidecar exists
  already.

  As in the in-process extractor, threads (the process's shared pool) read
  and decode the next images (TensorFlow's decode ops release the GIL)
  while this thread hands decoded ones downstream, where RunInference runs
  the CNN on batches: a worker keeps its cores busy on its own. Outputs
  keep the input order; at most two batches and a thread's worth of images
  wait decoded per instance.
  """

  def __init__(self, job: Job):
    self.job = job
    self.decoder = None
    self.seed_of = None
    self.store = None
    self.pool = None
    self.pending = collections.deque()

  def setup(self) -> None:
    _worker_setup()
    from retrain.features.extract import ImageDecoder, augmentation_seed  # pylint: disable=g-import-not-at-top
    self.seed_of = augmentation_seed
    self.decoder = ImageDecoder(self.job.fx.input_size, self.job.distortions,
                                self.job.fx.preprocessing)
    self.store = cache.BottleneckCache(self.job.root, self.job.tag)
    self.pool = _shared_decode_pool()

  def start_bundle(self) -> None:
    self.pending.clear()  # What a failed bundle left: Beam retries it.

  def _prepare(self, index: int, ref: cache.ImageRef):
    """-> (tag, value): the image, a failure, or (None, None) if cached."""
    try:
      fingerprint = cache.SourceFingerprint.of(ref.path)
    except OSError as e:
      return _FAILED, (index, ref.path, f"cannot read it ({e.strerror})")
    if self.store.load(ref, fingerprint) is not None:
      return None, None
    seed = (self.seed_of(self.job.random_seed,
                              f"{ref.class_dir}/{ref.relpath}", self.job.copy)
            if self.job.distortions else (0, 0))
    image, error = self.decoder.decode(ref.path, seed)
    if image is None:
      return _FAILED, (index, ref.path, error)
    return _IMAGE, ((index, ref, tuple(fingerprint)), image)

  def _output(self, future, windowed: bool = False):
    tag, value = future.result()
    if tag is None:
      beam.metrics.Metrics.counter(_NAMESPACE, "cached").inc()
      return None
    if windowed:  # finish_bundle outputs carry their window.
      value = GlobalWindows.windowed_value(value)
    return value if tag == _IMAGE else beam.pvalue.TaggedOutput(tag, value)

  def process(self, item):
    self.pending.append(self.pool.submit(self._prepare, *item))
    # Enough decoded ahead for two batches while the CNN runs on one.
    while len(self.pending) > 2 * self.job.batch_size + DECODE_THREADS:
      output = self._output(self.pending.popleft())
      if output is not None:
        yield output

  def finish_bundle(self):
    while self.pending:
      output = self._output(self.pending.popleft(), windowed=True)
      if output is not None:
        yield output

  def teardown(self) -> None:
    for future in self.pending:
      future.cancel()
    # A decode still running uses the decoder's session: wait for it.
    concurrent.futures.wait(self.pending)
    self.pending.clear()
    if self.decoder is not None:
      self.decoder.close()


class _WriteVector(beam.DoFn):
  """((index, ref, fingerprint), PredictionResult) -> the image's sidecar
  file; and every PACK_SIZE vectors (and at the end of a bundle) one pack
  file of (index, vector) rows, so that the driver reads a few packs rather
  than every sidecar again (one request each on an object store)."""

  def __init__(self, job: Job, folder: str, pack_size: int):
    self.job = job
    self.folder = folder
    self.pack_size = pack_size
    self.store = None
    self.indices: List[int] = []
    self.vectors: List[np.ndarray] = []

  def setup(self) -> None:
    _worker_setup()
    self.store = cache.BottleneckCache(self.job.root, self.job.tag)

  def start_bundle(self) -> None:
    self.indices, self.vectors = [], []

  def process(self, item) -> None:
    (index, ref, fingerprint), result = item
    vector = np.asarray(result.inference, np.float32)
    self.store.store(ref, vector, cache.SourceFingerprint(*fingerprint))
    self.indices.append(index)
    self.vectors.append(vector)
    if len(self.indices) >= self.pack_size:
      self._write_pack()
    beam.metrics.Metrics.counter(_NAMESPACE, "computed").inc()

  def finish_bundle(self) -> None:
    self._write_pack()

  def _write_pack(self) -> None:
    if not self.indices:
      return
    data = io.BytesIO()
    np.savez(data, index=np.array(self.indices, np.int64),
             vectors=np.stack(self.vectors))
    path = fs.join(self.folder, f"{uuid.uuid4().hex}.npz")
    fs.for_path(path).write_atomic(path, data.getvalue())
    self.indices, self.vectors = [], []


def _read_packs(folder: str) -> Iterator[Tuple[int, np.ndarray]]:
  """(index, vector) from every pack _WriteVector wrote in `folder`."""
  store = fs.for_path(folder)
  if not store.exists(folder):
    return
  for name in sorted(store.listdir(folder)):
    with np.load(io.BytesIO(store.read_bytes(fs.join(folder, name))),
                 allow_pickle=False) as pack:
      yield from zip(pack["index"].tolist(), pack["vectors"])


class _WriteFailure(beam.DoFn):
  """(index, path, reason) -> a record in the run folder, for the driver."""

  def __init__(self, folder: str):
    self.folder = folder

  def setup(self) -> None:
    _worker_setup()

  def process(self, failure: Tuple[int, str, str]) -> None:
    name = f"{failure[0]:012d}.json"
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
            runner: str, options: str, batch_size: int, distortions=None,
            copy: int = 0, random_seed: int = 0
            ) -> Iterator[Tuple[int, Optional[np.ndarray], Optional[str]]]:
  """Runs the pipeline over `refs`, which writes their sidecars under cache
  tag `tag` (the model's, or an augmented copy's); then yields (index,
  vector, None) or (index, None, why it cannot be used) for every image, as
  the in-process extractor's compute does (in no particular order), and
  (index, None, None) for an image the pipeline gave no answer for (a
  retried bundle that found it cached, a runner that dropped its output):
  see bottlenecks._recover."""
  run = fs.join(root, ".beam", f"{tag}-{uuid.uuid4().hex[:12]}")
  store = fs.for_path(run)
  job = Job(root, tag, stage_model(fx, root),
            dataclasses.replace(fx, graph_def=None), batch_size, distortions,
            copy, random_seed)
  try:
    shards = []
    for start in range(0, len(refs), SHARD_SIZE):
      path = fs.join(run, "list", f"{start // SHARD_SIZE:08d}.json")
      store.write_atomic(path, json.dumps(
          [_ref_row(i, refs[i])
           for i in range(start, min(start + SHARD_SIZE, len(refs)))]
      ).encode())
      shards.append(path)
    packs, failures = fs.join(run, "packs"), fs.join(run, "failed")
    logging.info("Beam: %d images in %d shards on %s (%s)", len(refs),
                 len(shards), runner, options or "default options")
    p = beam.Pipeline(options=pipeline_options(runner, options))
    decoded = (p | "Shards" >> beam.Create(shards)
               | "List" >> beam.ParDo(_ReadShard())
               | "Spread" >> beam.Reshuffle()
               | "Decode" >> beam.ParDo(_Decode(job)).with_outputs(
                   _FAILED, main="images"))
    _ = (decoded.images
         | "CNN" >> RunInference(KeyedModelHandler(GraphModelHandler(job)))
         | "Write" >> beam.ParDo(_WriteVector(job, packs, PACK_SIZE)))
    _ = decoded[_FAILED] | "Failed" >> beam.ParDo(_WriteFailure(failures))
    p.run().wait_until_finish()

    answered = np.zeros(len(refs), bool)
    for index, vector in _read_packs(packs):
      if not answered[index]:  # A retried bundle may write a pack twice.
        answered[index] = True
        yield index, vector, None
    if store.exists(failures):
      for name in store.listdir(failures):
        index, _, reason = json.loads(store.read_bytes(
            fs.join(failures, name)))
        if not answered[index]:
          answered[index] = True
          yield index, None, reason
    for index in np.flatnonzero(~answered).tolist():
      yield index, None, None  # Unanswered: the caller recovers it.
  finally:
    try:
      store.remove_tree(run)
    except OSError as e:
      logging.warning("Could not remove %s: %s", run, e)
