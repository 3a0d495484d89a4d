"""Computing bottlenecks: images decoded on all cores, the CNN run on batches."""

import collections
import concurrent.futures
import hashlib
import os
import re
import threading
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from retrain import imageinfo, preprocess
from retrain.errors import UserError
from retrain.model import FeatureExtractor, build_bottleneck

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
    try:
      with open(path, "rb") as f:
        data = f.read()
    except OSError as e:
      return None, f"cannot read it ({e.strerror})"
    return self.decode_bytes(data, seed)


def augmentation_seed(random_seed: int, key: str, copy: int) -> List[int]:
  """The stateless seed of augmented copy `copy` of the image named `key`."""
  digest = hashlib.sha1(f"{key}#{copy}".encode("utf-8")).digest()
  return [int(random_seed), int.from_bytes(digest[:7], "little")]


class BottleneckExtractor:
  """Turns image files into bottleneck vectors.

  Files are read and decoded by a thread pool (TensorFlow's decode ops release
  the GIL), while the main thread runs the CNN on batches of decoded images.

  Usage:
    with BottleneckExtractor(fx) as extractor:
      for index, vector, error in extractor.compute(paths): ...
  """

  def __init__(self, fx: FeatureExtractor, batch_size: int = 64,
               num_threads: Optional[int] = None,
               distortions: Optional[preprocess.Distortions] = None,
               copy: int = 0, random_seed: int = 0):
    """Args: distortions, copy, random_seed: compute augmented copy `copy`."""
    self.fx = fx
    self.batch_size = batch_size
    # Two decoding threads per core: each waits on file reads and on
    # session.run hand-offs, so one per core leaves cores idle (measured:
    # 2 cores, 1 thread 340/s, 2 threads 490/s, 4 threads 600/s).
    self.num_threads = num_threads or 2 * (os.cpu_count() or 1)
    self.decoder = ImageDecoder(fx.input_size, distortions, fx.preprocessing)
    self._copy = copy
    self._random_seed = random_seed
    self.graph = tf.Graph()
    with self.graph.as_default():
      self._images = tf1.placeholder(tf.float32, [None, *fx.input_size, 3],
                                     name="images")
      self._bottleneck = build_bottleneck(fx, self._images)
    self.graph.finalize()
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

  def decode_ref(self, ref) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """Decodes an image (cache.ImageRef or path), distorted if so set up."""
    if isinstance(ref, str):
      return self.decoder.decode(ref)
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
    window = self.batch_size * 2 + self.num_threads
    with concurrent.futures.ThreadPoolExecutor(self.num_threads) as pool:
      pending = collections.deque()
      batch_index, batch_images = [], []
      next_path = 0
      while pending or next_path < len(paths):
        while next_path < len(paths) and len(pending) < window:
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
          vectors = self.bottlenecks(np.stack(batch_images))
          for i, v in zip(batch_index, vectors):
            yield i, v, None
          batch_index, batch_images = [], []
