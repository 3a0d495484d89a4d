"""Computing bottlenecks: images decoded on all cores, the CNN run on batches."""

import collections
import concurrent.futures
import hashlib
import os
import re
import threading
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from cache import fs
from retrain.data import imageinfo, photo_stats, preprocess
from retrain.errors import UserError
from retrain.features.model import FeatureExtractor, build_bottleneck

tf1 = tf.compat.v1


def op_error_reason(error: tf.errors.OpError) -> str:
  """The line of a TensorFlow op error that says what went wrong."""
  noise = ("[[", "Node:", "File ", "Detected at", "Graph execution error",
           "Traceback")
  lines = [re.sub(r"\{\{[^}]*\}\}|\s*\[Op:\w+\]", "", line).strip()
           for line in (error.message or str(error)).splitlines()]
  lines = [line for line in lines if line and not line.startswith(noise)]
  return lines[-1] if lines else type(error).__name__


class ImageDecoder:
  """Decodes image files to model-sized float arrays, as training does.

  The ops are preprocess.decode_and_resize, the same that every exported
  graph contains. Thread-safe: decode from several threads at once.
  """

  def __init__(self, size: Tuple[int, int],
               distortions: Optional[preprocess.Distortions] = None,
               rule: preprocess.Preprocessing = preprocess.Preprocessing()):
    """Args: size (H, W); distortions: if given, decode() takes a seed."""
    self.size = tuple(size)
    self.distortions = distortions
    self.rule = rule
    self.graph = tf.Graph()
    with self.graph.as_default():
      self._contents = tf1.placeholder(tf.string, [], name="contents")
      self._seed = tf1.placeholder(tf.int64, [2], name="seed")
      if distortions:
        self._decoded = preprocess.distort_and_resize(
            preprocess.decode_image(self._contents, self.size, rule),
            self.size, distortions, self._seed, rule)
      else:
        self._decoded = preprocess.decode_and_resize(self._contents,
                                                     self.size, rule)
    self.graph.finalize()
    # One thread per decode: images are decoded in parallel by the callers'
    # threads, and nested thread pools would only contend for the cores.
    self.session = tf1.Session(graph=self.graph, config=tf1.ConfigProto(
        intra_op_parallelism_threads=1, inter_op_parallelism_threads=1))

  def close(self) -> None:
    self.session.close()

  def decode_bytes(self, data: bytes, seed: Sequence[int] = (0, 0)
                   ) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """(float32 [H, W, 3] in [0, 255], None) or (None, why it cannot be used).

    `seed` picks the random distortion, if the decoder has distortions.
    """
    refusal = imageinfo.check_decodable(data, *self.size,
                                        self.rule.jpeg_dct_keep)
    if refusal:
      return None, refusal
    feed = {self._contents: data}
    if self.distortions:
      feed[self._seed] = seed
    try:
      return self.session.run(self._decoded, feed), None
    except tf.errors.OpError as e:
      return None, f"cannot decode it ({op_error_reason(e)})"

  def decode(self, path: str, seed: Sequence[int] = (0, 0)
             ) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """decode_bytes of a file's contents (or why it cannot be read)."""
    image, error, _ = self.decode_sized(path, seed)
    return image, error

  def decode_sized(self, path: str, seed: Sequence[int] = (0, 0)
                   ) -> Tuple[Optional[np.ndarray], Optional[str],
                              Tuple[float, float]]:
    """decode(path) and the file's own (width, height) (NaN where its
    header does not say)."""
    try:
      data = fs.read_bytes(path)
    except OSError as e:
      return None, f"cannot read it ({e.strerror})", (np.nan, np.nan)
    info = imageinfo.sniff(data)
    size = (info.width, info.height) if info else (np.nan, np.nan)
    return (*self.decode_bytes(data, seed), size)


def augmentation_seed(random_seed: int, key: str, copy: int) -> List[int]:
  """The stateless seed of augmented copy `copy` of the image named `key`."""
  digest = hashlib.sha1(f"{key}#{copy}".encode("utf-8")).digest()
  return [int(random_seed), int.from_bytes(digest[:7], "little")]


# Batch sizes tried when none is given, smallest first. Light models run
# fastest on large batches (MobileNet 0.25/128: 1200/s at 8, 3000/s at 64);
# heavy ones can be slower there, where a large batch's activations no
# longer fit the CPU caches (Inception-v3-sized graphs peaked at 8 on one
# 2-core machine, were flat from 8 to 64 on another).
AUTO_BATCH_SIZES = (8, 16, 32, 64)

# The batch size chosen per model (tag), so that later extractors in the
# same process (augmented copies) do not time again.
_CHOSEN_BATCH: Dict[str, int] = {}

# Batch sizes whose largest activation (one tensor, all images of the batch)
# would pass this are not tried: memory, not speed, bounds them (an
# Inception-v3-sized model has 5.5 MB per image, so 64 is skipped).
ACTIVATION_BUDGET_BYTES = 256 * 2**20


def largest_activation_bytes(graph: tf.Graph) -> int:
  """Bytes per image of the graph's largest batch-sized tensor (static
  shapes: tensors [batch, ...] with the rest known); 0 if none is known."""
  largest = 0
  for op in graph.get_operations():
    for t in op.outputs:
      shape = t.shape
      if (shape.rank and shape.rank >= 2 and shape[0] is None and
          shape[1:].is_fully_defined() and t.dtype.is_floating):
        largest = max(largest, shape[1:].num_elements() * t.dtype.size)
  return largest


class BatchTuner:
  """Picks the CNN batch size by timing real batches, smallest size first.

  Each size runs TIMED_RUNS full batches (the first run of a new shape pays
  one-off set-up, so the fastest run counts); sizes stop growing once one is
  clearly slower than the best so far. The batches timed are real work:
  their results are kept.
  """

  TIMED_RUNS = 2
  SLOWER = 0.85  # A size at this share of the best rate ends the search.

  def __init__(self, sizes: Sequence[int] = AUTO_BATCH_SIZES):
    self.sizes = list(sizes)
    self.rates: Dict[int, float] = {}  # images/s, the fastest run.
    self._runs: Dict[int, int] = {}
    self._stopped = False

  @property
  def done(self) -> bool:
    return self._stopped or len(self._runs) == len(self.sizes) and all(
        n >= self.TIMED_RUNS for n in self._runs.values())

  def next_size(self) -> int:
    """The batch size to run next."""
    if self.done:
      return self.best
    for size in self.sizes:
      if self._runs.get(size, 0) < self.TIMED_RUNS:
        return size
    return self.best

  def record(self, size: int, images: int, seconds: float) -> None:
    """One batch of `images` (a full batch of `size`) took `seconds`."""
    if self.done or images != size or size not in self.sizes:
      return
    rate = images / max(seconds, 1e-9)
    self.rates[size] = max(self.rates.get(size, 0.0), rate)
    self._runs[size] = self._runs.get(size, 0) + 1
    if self._runs[size] >= self.TIMED_RUNS:
      if self.rates[size] < self.SLOWER * max(self.rates.values()):
        self._stopped = True

  def stop(self) -> None:
    """Ends the search with the sizes timed so far."""
    self._stopped = True

  @property
  def best(self) -> int:
    if not self.rates:
      return self.sizes[0]
    return max(self.rates, key=lambda s: (self.rates[s], -s))

  def describe(self) -> str:
    return ", ".join(f"{s}: {r:.0f}/s" for s, r in sorted(self.rates.items()))


class BottleneckExtractor:
  """Turns image files into bottleneck vectors.

  Files are read and decoded by a thread pool (TensorFlow's decode ops release
  the GIL), while the main thread runs the CNN on batches of decoded images.

  Usage:
    with BottleneckExtractor(fx) as extractor:
      for index, vector, error in extractor.compute(paths): ...
  """

  def __init__(self, fx: FeatureExtractor, batch_size: Optional[int] = None,
               num_threads: Optional[int] = None,
               distortions: Optional[preprocess.Distortions] = None,
               copy: int = 0, random_seed: int = 0):
    """Args:
      batch_size: images per CNN run; None picks it by timing the first
        batches (BatchTuner), once per model and process.
      distortions, copy, random_seed: compute augmented copy `copy`.
    """
    self.fx = fx
    self.graph = tf.Graph()
    with self.graph.as_default():
      self._images = tf1.placeholder(tf.float32, [None, *fx.input_size, 3],
                                     name="images")
      self._bottleneck = build_bottleneck(fx, self._images)
    self.graph.finalize()
    self._tuner = None
    if batch_size is None:
      batch_size = _CHOSEN_BATCH.get(fx.tag)
      if batch_size is None:
        per_image = largest_activation_bytes(self.graph)
        sizes = [s for s in AUTO_BATCH_SIZES
                 if s * per_image <= ACTIVATION_BUDGET_BYTES]
        self._tuner = BatchTuner(sizes or AUTO_BATCH_SIZES[:1])
        batch_size = self._tuner.next_size()
    self.batch_size = batch_size
    # Two decoding threads per core: each waits on file reads and on
    # session.run hand-offs, so one per core leaves cores idle (measured:
    # 2 cores, 1 thread 340/s, 2 threads 490/s, 4 threads 600/s).
    self.num_threads = num_threads or 2 * (os.cpu_count() or 1)
    self.decoder = ImageDecoder(fx.input_size, distortions, fx.preprocessing)
    self._copy = copy
    self._random_seed = random_seed
    # path -> photo_stats.compute of the originals decoded, when a dict is
    # given (the photo statistics, kept without a second decode).
    self.photo_stats: Optional[Dict[str, np.ndarray]] = None
    self.session = tf1.Session(graph=self.graph)
    # The first run of a session optimizes the graph and sets up its kernels
    # (0.1-0.3 s for a MobileNet); do it now, while the first images decode.
    self._warm_up = threading.Thread(target=self._run_warm_up, daemon=True)
    self._warm_up.start()

  def _run_warm_up(self) -> None:
    blank = np.zeros([self.batch_size, *self.fx.input_size, 3], np.float32)
    try:
      self.bottlenecks(blank)
    except UserError:
      pass  # A real failure shows on the first real batch.

  def close(self) -> None:
    self._warm_up.join()
    self.session.close()
    self.decoder.close()

  def __enter__(self) -> "BottleneckExtractor":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def bottlenecks(self, images: np.ndarray) -> np.ndarray:
    """float32 [n, H, W, 3] images in [0, 255] -> float32 [n, D].

    Raises:
      UserError: the model fails on a batch of images.
    """
    try:
      return self.session.run(self._bottleneck, {self._images: images})
    except tf.errors.OpError as e:
      raise UserError(f"{self.fx.source}: the model fails on a batch of "
                      f"images ({op_error_reason(e)}); check --input_tensor, "
                      "--bottleneck_tensor and --input_size")

  @property
  def tuning(self) -> bool:
    """True while the batch size is still being chosen."""
    return self._tuner is not None

  def _tune(self, images: int, seconds: float) -> None:
    """Records a timed batch; sets the next batch size, and once the tuner
    is done, keeps and logs its choice."""
    self._tuner.record(self.batch_size, images, seconds)
    self.batch_size = self._tuner.next_size()
    if self._tuner.done:
      _CHOSEN_BATCH[self.fx.tag] = self.batch_size
      skipped = [s for s in AUTO_BATCH_SIZES if s not in self._tuner.sizes]
      logging.info("Bottleneck batch size %d, chosen by timing the first "
                   "batches (%s%s); --bottleneck_batch_size sets it",
                   self.batch_size, self._tuner.describe(),
                   f"; {', '.join(map(str, skipped))} would need more than "
                   f"{ACTIVATION_BUDGET_BYTES >> 20} MB for one activation"
                   if skipped else "")
      self._tuner = None

  def decode_ref(self, ref) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """Decodes an image (cache.ImageRef or path), distorted if so set up."""
    if isinstance(ref, str):
      return self.decoder.decode(ref)
    if self.photo_stats is not None and not self.decoder.distortions:
      image, error, size = self.decoder.decode_sized(ref.path)
      if image is not None:
        self.photo_stats[ref.path] = photo_stats.compute(image, size)
      return image, error
    seed = augmentation_seed(self._random_seed,
                             f"{ref.class_dir}/{ref.relpath}", self._copy)
    return self.decoder.decode(ref.path, seed)

  def compute(self, paths: Sequence
              ) -> Iterator[Tuple[int, Optional[np.ndarray], Optional[str]]]:
    """Yields (index, vector, None) or (index, None, reason) for every image.

    `paths` holds file paths or cache.ImageRefs (which seed distortions).
    """
    if not paths:
      return
    with concurrent.futures.ThreadPoolExecutor(self.num_threads) as pool:
      pending = collections.deque()
      batch_index, batch_images = [], []
      next_path = 0
      while pending or next_path < len(paths):
        while next_path < len(paths) and len(pending) < (
            self.batch_size * 2 + self.num_threads):
          pending.append((next_path, pool.submit(self.decode_ref,
                                                 paths[next_path])))
          next_path += 1
        index, future = pending.popleft()
        image, error = future.result()
        if image is None:
          yield index, None, error
        else:
          batch_index.append(index)
          batch_images.append(image)
        if len(batch_images) == self.batch_size or (
            batch_images and not pending and next_path == len(paths)):
          self._warm_up.join()
          start = time.perf_counter()
          vectors = self.bottlenecks(np.stack(batch_images))
          if self._tuner:
            self._tune(len(batch_images), time.perf_counter() - start)
          for i, v in zip(batch_index, vectors):
            yield i, v, None
          batch_index, batch_images = [], []
    if self._tuner and self._tuner.rates:  # Too few images to try them all.
      self._tuner.stop()
      self._tune(0, 0.0)
