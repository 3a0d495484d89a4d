"""Several pretrained CNNs as one feature extractor.

`combine` turns the models of one run into one `FeatureExtractor` whose
bottleneck is every model's vector, each L2-normalised and scaled to
sqrt(D_m) (one unit per feature on average, whatever the model's own
scale), concatenated in the order the models were given:

  features = [ l2(v_1) * sqrt(D_1), ..., l2(v_M) * sqrt(D_M) ]  [batch, sum D_m]

The combined graph takes one image, at the input size of the model with the
largest input (the "primary"), scaled as that model takes it: its input
keeps the primary's name (input, Mul), so the classic clients of that model
still feed it. Inside, the image is unscaled, scaled for each other model
and resized to its input (bilinear, half-pixel centers: an op every runtime
has). Training must see the same vectors, so each model whose input is not
the primary's size is extracted through `resized`: the photo decoded to the
primary's size, then resized inside the graph, as the exports do. Each
model's vectors are cached under its own tag; `join` builds the combined
sets from them, normalised here exactly as in the graph.
"""

import dataclasses
import hashlib
import json
import math
from typing import Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf

from cache.naming import model_tag
from retrain.errors import UserError
from retrain.features.sets import LabeledBottlenecks

# "FeatureExtractor" below: retrain.features.model's, which imports this
# module (so it is named, not imported, here).
tf1 = tf.compat.v1

# Bumped when the combined graph or the normalisation changes.
VERSION = "1"
# The combined graph's output, and the prefix of each model inside it.
FEATURES = "features"
BACKBONE = "backbone"
_RESIZE_INPUT = "retrain_resize/image"
# As tf.math.l2_normalize: x / sqrt(max(sum(x^2), EPSILON)).
EPSILON = 1e-12


def primary_index(members: Sequence["FeatureExtractor"]) -> int:
  """The model whose input the combination takes: the largest (the first
  of equal ones), so that no model sees an image enlarged from a smaller
  one."""
  areas = [fx.input_size[0] * fx.input_size[1] for fx in members]
  return areas.index(max(areas))


def normalize(x: np.ndarray) -> np.ndarray:
  """float32 [n, D] -> each row L2-normalised and scaled by sqrt(D)."""
  x = np.asarray(x, np.float32)
  norms = np.sqrt(np.maximum(np.sum(x * x, axis=1, keepdims=True,
                                    dtype=np.float32), EPSILON))
  return x * (np.float32(math.sqrt(x.shape[1])) / norms)


def _normalize_graph(v: tf.Tensor, size: int) -> tf.Tensor:
  """normalize, in the graph: [batch, D] -> [batch, D]."""
  squares = tf.maximum(tf.reduce_sum(tf.square(v), 1, keepdims=True),
                       EPSILON)
  return v * (tf.math.rsqrt(squares) * math.sqrt(size))


def _resize(image: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """[batch, H, W, 3] -> [batch, *size, 3], bilinear with half-pixel
  centers (ResizeBilinear: TFLite, TensorFlow.js and ONNX all have it)."""
  return tf.raw_ops.ResizeBilinear(images=image, size=list(size),
                                   align_corners=False,
                                   half_pixel_centers=True)


def resized(fx: "FeatureExtractor",
            size: Tuple[int, int]) -> "FeatureExtractor":
  """`fx` fed at `size`: the scaled image resized to fx's input inside the
  graph (scaling and bilinear resizing commute). Its own cache tag: its
  vectors are those of photos decoded to `size` first."""
  if tuple(size) == tuple(fx.input_size):
    return fx
  graph = tf.Graph()
  with graph.as_default():
    image = tf1.placeholder(tf.float32, [None, *size, 3], name=_RESIZE_INPUT)
    tf1.import_graph_def(fx.graph_def,
                         input_map={fx.input_tensor: _resize(
                             image, fx.input_size)}, name="")
  digest = hashlib.sha1(json.dumps([VERSION, fx.tag, list(size)]).encode())
  return dataclasses.replace(
      fx, graph_def=graph.as_graph_def(), input_tensor=_RESIZE_INPUT + ":0",
      input_size=(int(size[0]), int(size[1])),
      tag=model_tag(fx.tag.rsplit("-", 1)[0] + f"_at{size[0]}x{size[1]}",
                    digest.hexdigest()))


def combine(models: Sequence["FeatureExtractor"]) -> "FeatureExtractor":
  """One FeatureExtractor of several models (see the module docstring);
  its `parts` are the models as their vectors are extracted (`resized`)."""
  if len(models) < 2:
    raise ValueError("combine needs two or more models")
  tags = [fx.tag for fx in models]
  if len(set(tags)) != len(tags):
    raise UserError("the same model is given twice ("
                    f"{models[tags.index(_first_repeat(tags))].source}); "
                    "pass each model once")
  first = primary_index(models)
  primary = models[first]
  size = primary.input_size
  input_name = _input_name(primary)
  graph = tf.Graph()
  with graph.as_default():
    scaled = tf1.placeholder(tf.float32, [None, *size, 3], name=input_name)
    pixels = scaled * primary.input_std + primary.input_mean
    vectors = []
    for i, fx in enumerate(models):
      own = scaled if i == first else (
          (pixels - fx.input_mean) * (1.0 / fx.input_std))
      if tuple(fx.input_size) != tuple(size):
        own = _resize(own, fx.input_size)
      out, = tf1.import_graph_def(fx.graph_def,
                                  input_map={fx.input_tensor: own},
                                  return_elements=[fx.bottleneck_tensor],
                                  name=f"{BACKBONE}{i}")
      vectors.append(_normalize_graph(
          tf.reshape(out, [-1, fx.bottleneck_size]), fx.bottleneck_size))
    tf.concat(vectors, 1, name=FEATURES)
  digest = hashlib.sha1(json.dumps([VERSION, tags, _source_digest()]
                                   ).encode()).hexdigest()
  # The primary's class, size, scaling and preprocessing (model.py imports
  # this module: no import back).
  return dataclasses.replace(
      primary, graph_def=graph.as_graph_def(),
      input_tensor=input_name + ":0", bottleneck_tensor=FEATURES + ":0",
      bottleneck_size=sum(fx.bottleneck_size for fx in models),
      tag=model_tag("combined_" + "_".join(t.rsplit("-", 1)[0][:12]
                                           for t in tags), digest),
      source=",".join(fx.source for fx in models), kind="combined",
      members=tuple(models),
      parts=tuple(resized(fx, size) for fx in models))


def _first_repeat(items: Sequence[str]) -> str:
  seen = set()
  for item in items:
    if item in seen:
      return item
    seen.add(item)
  return items[0]


def _input_name(primary: "FeatureExtractor") -> str:
  """The primary model's own input name (input, Mul), when it is a plain
  name that the combined graph can use for its input."""
  name = primary.input_tensor.split(":")[0]
  if (primary.input_tensor.endswith(":0") and "/" not in name and
      not name.startswith(BACKBONE) and name != FEATURES):
    return name
  return "model_input"


def _source_digest() -> str:
  with open(__file__, "rb") as f:
    return hashlib.sha1(f.read()).hexdigest()


# ------------------------------------------------------------------ sets --

class JoinedColumns:
  """Rows of several models' sets read side by side as one [n, sum D]
  array, each model's part normalised (`normalize`). Only integer-array
  indexing; only the rows asked for are read (the parts may be views over
  memory-mapped cache files)."""

  def __init__(self, parts: Sequence[Tuple[LabeledBottlenecks, np.ndarray]]):
    self.parts = list(parts)
    self.sizes = [s.x.shape[1] for s, _ in self.parts]
    self.shape = (len(self.parts[0][1]), int(sum(self.sizes)))
    self.dtype = np.dtype(np.float32)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, items) -> np.ndarray:
    items = np.asarray(items, np.int64)
    return np.concatenate([normalize(s.take(index[items]))
                           for s, index in self.parts], axis=1)


def join(sets_by_model: Sequence[Dict[str, LabeledBottlenecks]]
         ) -> Dict[str, LabeledBottlenecks]:
  """The combined sets: the items every model has a vector of (an image
  one model could not use is left out), in the first model's order."""
  joined = {}
  for cat, first in sets_by_model[0].items():
    where = [{p: i for i, p in enumerate(s[cat].paths)}
             for s in sets_by_model]
    keep = [i for i, p in enumerate(first.paths)
            if all(p in w for w in where[1:])]
    paths = [first.paths[i] for i in keep]
    parts = [(s[cat], np.array([w[p] for p in paths], np.int64))
             for s, w in zip(sets_by_model, where)]
    joined[cat] = LabeledBottlenecks(
        JoinedColumns(parts), first.y[np.array(keep, np.int64)]
        if keep else first.y[:0], paths, np.arange(len(paths)))
  return joined




def columns(sets: Dict[str, LabeledBottlenecks], fx: "FeatureExtractor",
            model: int) -> Dict[str, LabeledBottlenecks]:
  """The part of the combined sets that model `model` of fx.members gives
  (its normalised vectors), as views."""
  start = sum(m.bottleneck_size for m in fx.members[:model])
  stop = start + fx.members[model].bottleneck_size
  out = {}
  for cat, s in sets.items():
    if isinstance(s.x, JoinedColumns):
      out[cat] = LabeledBottlenecks(JoinedColumns([s.x.parts[model]]), s.y,
                                    s.paths, s.rows)
    else:
      out[cat] = LabeledBottlenecks(s.x[:, start:stop], s.y, s.paths, s.rows)
  return out
