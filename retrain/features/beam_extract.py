"""Bottlenecks computed by an Apache Beam pipeline (--beam_runner).

The same work as the in-process extractor (extract.BottleneckExtractor),
spread over Beam workers, in a pipeline shaped to be correct on every
runner, Dask's included:

  shard files of the image list -> Reshuffle (spreads them over workers)
    -> ExtractShard: for each image of a shard, its valid sidecar if one is
       there (a retried shard), else read, decode and run the CNN in process
       (extract.BottleneckExtractor, one per worker process and model);
       sidecars written atomically in the cache's format; then one pack file
       holding the shard's every vector and every image it cannot use

Work is done and written in `process` (Beam 2.77's DaskRunner drops what
`finish_bundle` emits), the pipeline has one sink and no tagged outputs, and
each shard's pack answers for all of its images even when an earlier attempt
cached them, so a retried or duplicated shard answers the same. The driver
(bottlenecks._fill) indexes the packs' vectors (a few reads, not one per
image, which matters on an object store); an image no pack answers for is
recovered by the driver (bottlenecks._recover). Everything the workers read
and write goes through cache.fs, so a cache on gs:// works on Dataflow; the
model is staged as a file in the cache folder (<bottleneck_dir>/.beam/
<tag>.pb) rather than pickled into the pipeline. Workers import this module
by name: they need the installed `retrain` package (pip install '.[beam]';
--setup_file on Dataflow).

Importing this module imports Apache Beam; nothing else in retrain does.
"""

import contextlib
import dataclasses
import io
import json
import math
import shlex
import sys
import threading
import uuid
from typing import Iterator, List, Optional, Sequence, Tuple

import os

from absl import logging


from retrain.features import beam_quiet  # pylint: disable=g-import-not-at-top

# Before Beam's import: its notes hidden, TensorFlow imported quietly (in a
# worker, unpickling the pipeline's DoFn imports this module first and then
# the model's, which imports TensorFlow).
_QUIET = beam_quiet.quiet_local_beam()

import apache_beam as beam  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

import cache
from cache import fs

# CNN batch size without --bottleneck_batch_size (the in-process timing
# tuner does not run on workers).
DEFAULT_BATCH_SIZE = 32

# Images per shard of the list: at least two CNN batches (a worker decodes
# the next images while the CNN runs), at most MAX_SHARD_SIZE (what a retry
# repeats), else the list in MIN_SHARDS shards to spread over the workers.
MAX_SHARD_SIZE = 512
MIN_SHARDS = 8

# The runners --beam_runner accepts by short name, as Beam spells them.
RUNNER_PATHS = {
    "DaskRunner": "apache_beam.runners.dask.dask_runner.DaskRunner",
}

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
  # Also write each computed original's photo statistics (photo_stats) as
  # a sidecar under their own tag, for the audit.
  photo_stats: bool = False


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


# Per worker process: the extractor of the model last used (a runner may
# set up a DoFn once per bundle, Dask's once per partition, so the model is
# loaded once per process, not per DoFn) and a lock: one shard at a time
# runs the CNN, which uses every core of the worker by itself.
_extractor_lock = threading.Lock()
_extractor_key: Optional[tuple] = None
_extractor = None


def _shared_extractor(job: Job):
  """The process's BottleneckExtractor for `job` (call with
  _extractor_lock held); built on first use, replacing another model's."""
  global _extractor, _extractor_key
  key = (job.graph_path, job.tag, job.batch_size)
  if _extractor_key != key:
    release_extractor()
    tf = _worker_setup()
    from retrain.features.extract import BottleneckExtractor  # pylint: disable=g-import-not-at-top
    graph_def = tf.compat.v1.GraphDef.FromString(
        fs.for_path(job.graph_path).read_bytes(job.graph_path))
    _extractor = BottleneckExtractor(
        dataclasses.replace(job.fx, graph_def=graph_def), job.batch_size,
        distortions=job.distortions, copy=job.copy,
        random_seed=job.random_seed)
    _extractor_key = key
  return _extractor


def release_extractor() -> None:
  """Closes this process's worker extractor, if any (the driver's, after an
  in-memory DirectRunner ran the workers' code in it)."""
  global _extractor, _extractor_key
  if _extractor is not None:
    _extractor.close()
  _extractor, _extractor_key = None, None


def _ref_row(index: int, ref: cache.ImageRef) -> list:
  return [index, ref.path, ref.class_dir, ref.relpath]


class Answers:
  """A shard's answer for each of its images: (index, vector) rows and
  (index, reason) rows for images it cannot use."""

  def __init__(self):
    self.indices: List[int] = []
    self.vectors: List[np.ndarray] = []
    self.failed: List[int] = []
    self.reasons: List[str] = []

  def vector(self, index: int, vector: np.ndarray) -> None:
    self.indices.append(index)
    self.vectors.append(np.asarray(vector, np.float32))

  def failure(self, index: int, reason: str) -> None:
    self.failed.append(index)
    self.reasons.append(reason)

  def to_bytes(self, dim: int) -> bytes:
    data = io.BytesIO()
    np.savez(data, index=np.array(self.indices, np.int64),
             vectors=(np.stack(self.vectors) if self.vectors
                      else np.zeros([0, dim], np.float32)),
             failed=np.array(self.failed, np.int64),
             reasons=np.array(self.reasons, dtype=str))
    return data.getvalue()


class _ExtractShard(beam.DoFn):
  """A shard file of the image list -> the sidecar of every image it
  computes and one pack file answering for all its images; emits the
  shard's image count (nothing per image)."""

  def __init__(self, job: Job, packs: str):
    self.job = job
    self.packs = packs
    self.store = None

  def setup(self) -> None:
    _worker_setup()
    self.store = cache.BottleneckCache(self.job.root, self.job.tag)
    self.stats_store = None
    if self.job.photo_stats:
      from retrain.data import photo_stats  # pylint: disable=g-import-not-at-top
      self.stats_store = cache.BottleneckCache(
          self.job.root, photo_stats.tag(self.job.tag))

  def process(self, path: str) -> Iterator[int]:
    rows = json.loads(fs.for_path(path).read_bytes(path))
    answers = self._answer([(i, cache.ImageRef(*ref)) for i, *ref in rows])
    self._write_pack(path, answers)
    counter = beam.metrics.Metrics.counter
    counter(_NAMESPACE, "images").inc(len(rows))
    yield len(rows)

  def _answer(self, items: Sequence[Tuple[int, cache.ImageRef]]) -> Answers:
    """Every image's vector (its valid sidecar, else computed and stored)
    or why it cannot be used."""
    answers = Answers()
    todo = []
    for index, ref in items:
      try:
        fingerprint = cache.SourceFingerprint.of(ref.path)
      except OSError as e:
        answers.failure(index, f"cannot read it ({e.strerror})")
        continue
      vector = self.store.load(ref, fingerprint)
      if vector is not None:  # An earlier attempt at this shard wrote it.
        answers.vector(index, vector)
      else:
        todo.append((index, ref, fingerprint))
    if not todo:
      return answers
    with _extractor_lock:
      extractor = _shared_extractor(self.job)
      decoded = extractor.photo_stats = {} if self.stats_store else None
      try:
        for j, vector, error in extractor.compute([t[1] for t in todo]):
          index, ref, fingerprint = todo[j]
          if vector is None:
            answers.failure(index, error)
            continue
          self.store.store(ref, np.asarray(vector, np.float32), fingerprint)
          answers.vector(index, vector)
          if decoded is not None and ref.path in decoded:
            self.stats_store.store(ref, decoded.pop(ref.path), fingerprint)
      finally:
        extractor.photo_stats = None
    return answers

  def _write_pack(self, shard: str, answers: Answers) -> None:
    """The shard's answers as one file; a retried or duplicated shard
    writes its own (the driver reads each image's first answer)."""
    stem = shard.rsplit("/", 1)[-1][:-len(".json")]
    name = f"{stem}-{uuid.uuid4().hex}.npz"
    path = fs.join(self.packs, name)
    fs.for_path(path).write_atomic(path, answers.to_bytes(
        self.job.fx.bottleneck_size))


def _read_packs(folder: str
                ) -> Iterator[Tuple[int, Optional[np.ndarray], Optional[str]]]:
  """(index, vector, None) and (index, None, reason) from every pack in
  `folder`."""
  store = fs.for_path(folder)
  if not store.exists(folder):
    return
  for name in sorted(store.listdir(folder)):
    with np.load(io.BytesIO(store.read_bytes(fs.join(folder, name))),
                 allow_pickle=False) as pack:
      for index, vector in zip(pack["index"].tolist(), pack["vectors"]):
        yield index, vector, None
      for index, reason in zip(pack["failed"].tolist(),
                               pack["reasons"].tolist()):
        yield index, None, reason


def shard_size(n: int, batch_size: int) -> int:
  """Images per shard for a list of `n` (see MAX_SHARD_SIZE)."""
  return int(min(MAX_SHARD_SIZE, max(2 * batch_size,
                                     math.ceil(n / MIN_SHARDS))))


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
  notes, once per worker, are not the user's business). On the DaskRunner,
  each shard is a partition of its own (Dask's default of 128 elements per
  partition would put a whole list on one worker) unless the options set
  --dask_partition_size or --dask_npartitions.
  """
  args = shlex.split(options or "")
  given = lambda name: any(a.startswith(name) for a in args)
  if runner == "DirectRunner" and _QUIET:
    if not given("--default_sdk_harness_log_level"):
      args.append("--default_sdk_harness_log_level=ERROR")
  if runner == "DaskRunner" and not (given("--dask_partition_size") or
                                     given("--dask_npartitions")):
    args.append("--dask_partition_size=1")
  if _QUIET:  # Inherited by local workers (DirectRunner, a local Dask).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return PipelineOptions(args + [f"--runner={RUNNER_PATHS.get(runner, runner)}"])


def _run(p: beam.Pipeline) -> None:
  """Runs the pipeline to its end; a Dask client the runner opened (and
  the local cluster it started without --dask_client_address) is closed
  after it."""
  result = p.run()
  try:
    result.wait_until_finish()
  finally:
    client = getattr(result, "client", None)
    if client is not None:
      client.close()


def compute(refs: Sequence[cache.ImageRef], fx, tag: str, root: str,
            runner: str, options: str, batch_size: int, distortions=None,
            copy: int = 0, random_seed: int = 0, photo_stats: bool = False
            ) -> Iterator[Tuple[int, Optional[np.ndarray], Optional[str]]]:
  """Runs the pipeline over `refs`, which writes their sidecars under cache
  tag `tag` (the model's, or an augmented copy's); then yields (index,
  vector, None) or (index, None, why it cannot be used) for every image, as
  the in-process extractor's compute does (in no particular order), and
  (index, None, None) for an image no shard answered for (a runner that
  dropped work): see bottlenecks._recover. photo_stats: the workers also
  write each original's photo statistics (see Job)."""
  run = fs.join(root, ".beam", f"{tag}-{uuid.uuid4().hex[:12]}")
  store = fs.for_path(run)
  job = Job(root, tag, stage_model(fx, root),
            dataclasses.replace(fx, graph_def=None), batch_size, distortions,
            copy, random_seed, photo_stats)
  try:
    shards = []
    size = shard_size(len(refs), batch_size)
    for start in range(0, len(refs), size):
      path = fs.join(run, "list", f"{start // size:08d}.json")
      store.write_atomic(path, json.dumps(
          [_ref_row(i, refs[i])
           for i in range(start, min(start + size, len(refs)))]).encode())
      shards.append(path)
    packs = fs.join(run, "packs")
    logging.info("Beam: %d images in %d shards on %s (%s)", len(refs),
                 len(shards), runner, options or "default options")
    with contextlib.ExitStack() as stack:
      if runner == "DaskRunner":
        from retrain.features import dask_cluster  # pylint: disable=g-import-not-at-top
        options = stack.enter_context(dask_cluster.local_cluster(options,
                                                                 _QUIET))
      p = beam.Pipeline(options=pipeline_options(runner, options))
      _ = (p | "Shards" >> beam.Create(shards)
           | "Spread" >> beam.Reshuffle()
           | "Extract" >> beam.ParDo(_ExtractShard(job, packs)))
      try:
        _run(p)
      finally:
        release_extractor()  # An in-memory runner ran workers' code here.

    answered = np.zeros(len(refs), bool)
    for index, vector, reason in _read_packs(packs):
      if not answered[index]:  # A retried shard may answer twice.
        answered[index] = True
        yield index, vector, reason
    for index in np.flatnonzero(~answered).tolist():
      yield index, None, None  # Unanswered: the caller recovers it.
  finally:
    try:
      store.remove_tree(run)
    except OSError as e:
      logging.warning("Could not remove %s: %s", run, e)
