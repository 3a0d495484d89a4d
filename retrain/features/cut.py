"""Where to cut a frozen CNN for fine-tuning, and the cut's activations as
cached features.

Fine-tuning (issue 10) trains the last weight layers below the bottleneck.
This module finds them in any frozen GraphDef (a layer = a Conv2D,
DepthwiseConv2dNative or MatMul with a constant kernel, and the bias or
BatchNorm offset that follows it; BatchNorm scales and moving statistics stay
frozen) and the tensors that cross into that trainable top (one for a chain
like MobileNet, several across skip connections or parallel branches). The
cut's tensors, flattened per image, are cached like bottlenecks
(cut_feature_extractor); training.top builds the top itself with variables.
"""

import dataclasses
import hashlib
import json
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import tensorflow as tf

from cache.naming import model_tag
from retrain.errors import UserError
from retrain.features.model import FeatureExtractor

tf1 = tf.compat.v1

WEIGHT_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul")
_BATCH_NORMS = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
_ADDS = ("Add", "AddV2", "BiasAdd")


@dataclasses.dataclass(frozen=True)
class Layer:
  """One trainable layer: its weight op and the tensors made variables."""
  op: str  # The Conv2D / DepthwiseConv2dNative / MatMul node.
  kernel: str  # The tensor it reads as its kernel (a constant).
  bias: Optional[str]  # Its bias or BatchNorm offset tensor, if any.


@dataclasses.dataclass(frozen=True)
class Cut:
  """The trainable top of a CNN: its layers (bottom to top), the tensors
  that cross into it from below (cached per image), and its output."""
  layers: Tuple[Layer, ...]
  inputs: Tuple[str, ...]
  bottleneck: str

  def trainable(self) -> List[str]:
    """Every tensor that becomes a variable."""
    return [t for layer in self.layers for t in (layer.kernel, layer.bias)
            if t]


def node_name(tensor: str) -> str:
  return tensor.split(":")[0].lstrip("^")


def _tensor(name: str) -> str:
  return name if ":" in name else name + ":0"


class _Graph:
  """Nodes, consumers, constness and a topological order of a GraphDef."""

  def __init__(self, graph_def: tf1.GraphDef):
    self.nodes = {n.name: n for n in graph_def.node}
    self.index = {n.name: i for i, n in enumerate(graph_def.node)}
    self.consumers: Dict[str, List[str]] = {n: [] for n in self.nodes}
    for n in graph_def.node:
      for i in n.input:
        if not i.startswith("^") and node_name(i) in self.consumers:
          self.consumers[node_name(i)].append(n.name)
    self._constant: Dict[str, bool] = {}

  def inputs(self, name: str) -> List[str]:
    return [i for i in self.nodes[name].input if not i.startswith("^")]

  def constant(self, name: str) -> bool:
    """True if the node computes from constants only."""
    if name not in self._constant:
      node = self.nodes[name]
      if node.op == "Const":
        result = True
      elif node.op in ("Placeholder", "PlaceholderWithDefault") or not (
          self.inputs(name)):
        result = False
      else:
        self._constant[name] = False  # Cycles (none in a GraphDef) stop.
        result = all(self.constant(node_name(i)) for i in self.inputs(name))
      self._constant[name] = result
    return self._constant[name]

  def ancestors(self, name: str) -> Set[str]:
    """`name` and every node it depends on (data inputs)."""
    seen, stack = set(), [name]
    while stack:
      n = stack.pop()
      if n not in seen:
        seen.add(n)
        stack.extend(node_name(i) for i in self.inputs(n))
    return seen

  def descendants(self, name: str, within: Set[str]) -> Set[str]:
    """Nodes of `within` that depend on `name` (not `name` itself)."""
    seen, stack = set(), list(self.consumers[name])
    while stack:
      n = stack.pop()
      if n in within and n not in seen:
        seen.add(n)
        stack.extend(self.consumers[n])
    return seen

  def order(self, names: Set[str]) -> List[str]:
    """`names` in a topological order (ties: GraphDef order)."""
    placed, out = set(), []

    def visit(n):
      stack = [(n, False)]
      while stack:
        m, done = stack.pop()
        if done:
          if m not in placed:
            placed.add(m)
            out.append(m)
          continue
        if m in placed:
          continue
        stack.append((m, True))
        for i in sorted((node_name(i) for i in self.inputs(m)
                         if node_name(i) in names), key=self.index.get,
                        reverse=True):
          if i not in placed:
            stack.append((i, False))
    for n in sorted(names, key=self.index.get):
      visit(n)
    return out


def _bias_of(g: _Graph, op: str, below: Set[str]) -> Optional[str]:
  """The bias or BatchNorm offset applied to `op`'s output, if constant:
  BiasAdd/Add of a constant, a FusedBatchNorm's offset, or the constant
  added after a multiplication by a constant (a BatchNorm folded into
  Mul and Add, as slim graphs have)."""
  def constant_other(node, known):
    others = [i for i in g.inputs(node) if node_name(i) != known]
    if len(others) == 1 and g.constant(node_name(others[0])):
      return _tensor(others[0])
    return None
  current = op
  for _ in range(2):  # The op, then at most one Mul by a constant.
    users = [u for u in g.consumers[current] if u in below]
    if len(users) != 1:
      return None
    user = g.nodes[users[0]]
    if user.op in _BATCH_NORMS:
      offset = user.input[2]
      return _tensor(offset) if g.constant(node_name(offset)) else None
    if user.op in _ADDS:
      return constant_other(user.name, current)
    if user.op == "Mul" and constant_other(user.name, current):
      current = user.name
      continue
    return None
  return None


def weight_layers(graph_def: tf1.GraphDef,
                  bottleneck: str) -> List[Layer]:
  """The weight layers the bottleneck depends on, bottom to top."""
  g = _Graph(graph_def)
  if node_name(bottleneck) not in g.nodes:
    raise UserError(f"{bottleneck} is not in the graph")
  below = g.ancestors(node_name(bottleneck))
  layers = []
  for name in g.order(below):
    node = g.nodes[name]
    if node.op in WEIGHT_OPS and len(node.input) >= 2:
      kernel = node.input[1]
      if g.constant(node_name(kernel)) and not g.constant(name):
        layers.append(Layer(name, _tensor(kernel), _bias_of(g, name, below)))
  return layers


def choose_cut(graph_def: tf1.GraphDef, bottleneck: str, layers: int = 0,
               from_tensor: Optional[str] = None) -> Cut:
  """The trainable top: the last `layers` weight layers below the
  bottleneck, or everything above `from_tensor`.

  Raises:
    UserError: too many layers asked for, or a tensor that is not below the
      bottleneck (the message lists candidates).
  """
  g = _Graph(graph_def)
  top_node = node_name(bottleneck)
  all_layers = weight_layers(graph_def, bottleneck)
  below = g.ancestors(top_node)
  if from_tensor:
    start = node_name(from_tensor)
    if start not in below or start == top_node or g.constant(start):
      candidates = [g.inputs(l.op)[0] for l in all_layers[-5:]]
      raise UserError(
          f"--fine_tune_from={from_tensor} is not a tensor below the "
          f"bottleneck {bottleneck}; candidates (inputs of the last weight "
          f"layers): {', '.join(_tensor(c) for c in candidates)}")
    top = g.descendants(start, below)
  else:
    if not 0 < layers <= len(all_layers):
      raise UserError(f"--fine_tune_layers={layers}: the model has "
                      f"{len(all_layers)} weight layers below the bottleneck;"
                      f" pass 1 to {len(all_layers)}")
    top = set()
    for layer in all_layers[-layers:]:
      top |= {layer.op} | g.descendants(layer.op, below)
  top = {n for n in top if not g.constant(n)}
  chosen = tuple(l for l in all_layers if l.op in top)
  inputs = []
  for name in g.order(top):
    for i in g.inputs(name):
      if node_name(i) not in top and not g.constant(node_name(i)):
        if _tensor(i) not in inputs:
          inputs.append(_tensor(i))
  return Cut(chosen, tuple(inputs), _tensor(bottleneck))


def cut_shapes(graph_def: tf1.GraphDef, input_tensor: str,
               input_size: Tuple[int, int], cut: Cut
               ) -> Dict[str, List[Optional[int]]]:
  """Static shapes ([None, ...]) of the cut's input tensors when the model
  is fed [batch, H, W, 3] images at `input_tensor`."""
  graph = tf.Graph()
  with graph.as_default():
    images = tf1.placeholder(tf.float32, [None, *input_size, 3])
    outs = tf1.import_graph_def(graph_def, input_map={input_tensor: images},
                                return_elements=list(cut.inputs), name="")
  return {name: [None] + t.shape.as_list()[1:]
          for name, t in zip(cut.inputs, outs)}


CUT_INPUT = "cut_input"
CUT_OUTPUT = "cut_vector"


def cut_vector_graph(graph_def: tf1.GraphDef, input_tensor: str,
                     input_size: Tuple[int, int], cut: Cut
                     ) -> Tuple[tf1.GraphDef, int]:
  """A GraphDef computing, per image, the cut's tensors flattened and
  concatenated: cut_input:0 (the model's own, scaled, input [batch, H, W,
  3]) -> cut_vector:0 [batch, n]. Cached per image like a bottleneck, it is
  all the trainable top needs (split_cut_vector undoes the flattening).
  Returns (graph_def, n)."""
  graph = tf.Graph()
  with graph.as_default():
    images = tf1.placeholder(tf.float32, [None, *input_size, 3],
                             name=CUT_INPUT)
    outs = tf1.import_graph_def(graph_def, input_map={input_tensor: images},
                                return_elements=list(cut.inputs),
                                name="model")
    sizes = [int(np.prod(t.shape.as_list()[1:])) for t in outs]
    flat = [tf.reshape(t, [-1, n]) for t, n in zip(outs, sizes)]
    tf.identity(tf.concat(flat, 1) if len(flat) > 1 else flat[0],
                name=CUT_OUTPUT)
  return graph.as_graph_def(), sum(sizes)


# Bump when the cut vector's layout changes (cache files are then recomputed).
_CUT_FORMAT = "cut/1"


def cut_feature_extractor(fx: FeatureExtractor, cut: Cut) -> FeatureExtractor:
  """A FeatureExtractor whose "bottleneck" is the cut vector, so the
  bottleneck cache and extractor compute, cache and read back the top's
  inputs per image (and per augmented copy) unchanged. Its model tag is
  the model's plus the cut, so another cut never reads these files."""
  graph_def, size = cut_vector_graph(fx.graph_def, fx.input_tensor,
                                     fx.input_size, cut)
  digest = hashlib.sha1(json.dumps(
      [fx.tag, _CUT_FORMAT, list(cut.inputs)]).encode()).hexdigest()
  return dataclasses.replace(
      fx, graph_def=graph_def, input_tensor=CUT_INPUT + ":0",
      bottleneck_tensor=CUT_OUTPUT + ":0", bottleneck_size=size,
      tag=model_tag(fx.tag.rsplit("-", 1)[0] + "_cut", digest))
