"""What a model costs a client: milliseconds per photo and megabytes.

Measured once per model and machine (kept in the cache folder, cache/memo),
on one blank image at a time as a client classifies photos: a warm-up run,
then the median of a few.
"""

import os
import platform
import time

import numpy as np
import tensorflow as tf

from cache import memo
from retrain.features.model import FeatureExtractor, build_bottleneck

tf1 = tf.compat.v1

MEMO_KIND = "inference_time"
RUNS = 5


def megabytes(fx: FeatureExtractor) -> float:
  """The model's frozen graph, in MB (its float32 weights, mostly)."""
  return fx.graph_def.ByteSize() / 1e6


def milliseconds_per_image(fx: FeatureExtractor, memo_root: str = "") -> float:
  """The model's time for one image on this machine (batch 1, the median of
  RUNS runs after a warm-up), kept under memo_root for later runs."""
  key = memo.digest(["1", fx.tag, platform.node(), platform.machine(),
                     os.cpu_count()])
  if memo_root:
    kept = memo.load(memo_root, MEMO_KIND, key)
    if isinstance(kept, float):
      return kept
  graph = tf.Graph()
  with graph.as_default():
    images = tf1.placeholder(tf.float32, [1, *fx.input_size, 3])
    out = build_bottleneck(fx, images)
  blank = np.full([1, *fx.input_size, 3], 128.0, np.float32)
  with tf1.Session(graph=graph) as session:
    session.run(out, {images: blank})
    seconds = []
    for _ in range(RUNS):
      start = time.perf_counter()
      session.run(out, {images: blank})
      seconds.append(time.perf_counter() - start)
  value = float(np.median(seconds) * 1000)
  if memo_root:
    memo.store(memo_root, MEMO_KIND, key, value)
  return value
