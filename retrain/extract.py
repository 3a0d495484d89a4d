"""Computing bottlenecks: images decoded on all cores, the CNN run on batches."""

import collections
import concurrent.futures
import os
import re
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from retrain import imageinfo, preprocess
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

  def __init__(self, size: Tuple[int, int]):
    self.size = tuple(size)
    self.graph = tf.Graph()
    with self.graph.as_default():
      self._contents = tf1.placeholder(tf.string, [], name="contents")
      self._decoded = preprocess.decode_and_resize(self._contents, self.size)
    self.graph.finalize()
    self.session = tf1.Session(graph=self.graph)

  def close(self) -> None:
    self.session.close()

  def decode_bytes(self, data: bytes
                   ) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """(float32 [H, W, 3] in [0, 255], None) or (None, why it cannot be used)."""
    refusal = imageinfo.check_decodable(data, *self.size)
    if refusal:
      return None, refusal
    try:
      return self.session.run(self._decoded, {self._contents: data}), None
    except tf.errors.OpError as e:
      return None, f"cannot decode it ({op_error_reason(e)})"

  def decode(self, path: str) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """decode_bytes of a file's contents (or why it cannot be read)."""
    try:
      with open(path, "rb") as f:
        data = f.read()
    except OSError as e:
      return None, f"cannot read it ({e.strerror})"
    return self.decode_bytes(data)


class BottleneckExtractor:
  """Turns image files into bottleneck vectors.

  Files are read and decoded by a thread pool (TensorFlow's decode ops release
  the GIL), while the main thread runs the CNN on batches of decoded images.

  Usage:
    with BottleneckExtractor(fx) as extractor:
      for index, vector, error in extractor.compute(paths): ...
  """

  def __init__(self, fx: FeatureExtractor, batch_size: int = 64,
               num_threads: Optional[int] = None):
    self.fx = fx
    self.batch_size = batch_size
    self.num_threads = num_threads or os.cpu_count() or 1
    self.decoder = ImageDecoder(fx.input_size)
    self.decode = self.decoder.decode
    self.graph = tf.Graph()
    with self.graph.as_default():
      self._images = tf1.placeholder(tf.float32, [None, *fx.input_size, 3],
                                     name="images")
      self._bottleneck = build_bottleneck(fx, self._images)
    self.graph.finalize()
    self.session = tf1.Session(graph=self.graph)

  def close(self) -> None:
    self.session.close()
    self.decoder.close()

  def __enter__(self) -> "BottleneckExtractor":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def bottlenecks(self, images: np.ndarray) -> np.ndarray:
    """float32 [n, H, W, 3] images in [0, 255] -> float32 [n, D]."""
    return self.session.run(self._bottleneck, {self._images: images})

  def compute(self, paths: Sequence[str]
              ) -> Iterator[Tuple[int, Optional[np.ndarray], Optional[str]]]:
    """Yields (index, vector, None) or (index, None, reason) for every path."""
    if not paths:
      return
    window = self.batch_size * 2 + self.num_threads
    with concurrent.futures.ThreadPoolExecutor(self.num_threads) as pool:
      pending = collections.deque()
      batch_index, batch_images = [], []
      next_path = 0
      while pending or next_path < len(paths):
        while next_path < len(paths) and len(pending) < window:
          pending.append((next_path, pool.submit(self.decode,
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
          vectors = self.bottlenecks(np.stack(batch_images))
          for i, v in zip(batch_index, vectors):
            yield i, v, None
          batch_index, batch_images = [], []
