"""The trainable top of a frozen CNN: the layers above a cut
(features.cut), rebuilt with tf.Variables, and trained values written back
into the frozen graph.

Fed the cached cut vectors (split_cut_vector undoes their flattening);
TF1-style graph; no session state is kept here.
"""

import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from retrain.features.cut import Cut, node_name

tf1 = tf.compat.v1


def constant_values(graph_def: tf1.GraphDef,
                    tensors: Sequence[str]) -> Dict[str, np.ndarray]:
  """The values of constant-only tensors of a GraphDef."""
  graph = tf.Graph()
  with graph.as_default():
    outs = tf1.import_graph_def(graph_def, return_elements=list(tensors),
                                name="")
  with tf1.Session(graph=graph) as sess:
    return dict(zip(tensors, sess.run(outs)))


def split_cut_vector(vectors: tf.Tensor, cut: Cut,
                     shapes: Dict[str, List[Optional[int]]]
                     ) -> Dict[str, tf.Tensor]:
  """cut_vector rows [batch, n] -> the cut's tensors [batch, ...], by name."""
  sizes = [int(np.prod(shapes[t][1:])) for t in cut.inputs]
  parts = tf.split(vectors, sizes, axis=1)
  return {t: tf.reshape(p, [-1, *shapes[t][1:]])
          for t, p in zip(cut.inputs, parts)}


@dataclasses.dataclass
class TrainableTop:
  """The top of the CNN in the default graph, fed the cut's tensors."""
  inputs: Dict[str, tf.Tensor]  # Cut tensor name -> placeholder.
  variables: Dict[str, tf.Variable]  # Trainable tensor name -> variable.
  bottleneck: tf.Tensor  # float32 [batch, D].


def build_trainable_top(graph_def: tf1.GraphDef, cut: Cut,
                        shapes: Dict[str, List[Optional[int]]],
                        name: str = "top",
                        input_map: Optional[Dict[str, tf.Tensor]] = None,
                        values: Optional[Dict[str, np.ndarray]] = None
                        ) -> TrainableTop:
  """Adds the CNN's top to the default graph: placeholders for the cut's
  tensors (or the tensors `input_map` gives for them, e.g. split_cut_vector
  of cached vectors), tf.Variables (initialised from the constants' values)
  for the trainable kernels and biases, and everything else as it was.
  `values`: the trainable tensors' values, if already computed
  (constant_values).
  """
  if values is None:
    values = constant_values(graph_def, cut.trainable())
  if input_map is not None:
    inputs = {t: input_map[t] for t in cut.inputs}
  else:
    with tf.name_scope(name + "_inputs"):
      inputs = {t: tf1.placeholder(tf.float32, shapes[t],
                                   name=node_name(t).replace("/", "_"))
                for t in cut.inputs}
  with tf1.variable_scope(name + "_variables"):
    variables = {t: tf1.Variable(values[t],
                                 name=node_name(t).replace("/", "_"))
                 for t in cut.trainable()}
  mapping = dict(inputs)
  mapping.update({t: v.value() for t, v in variables.items()})
  out, = tf1.import_graph_def(graph_def, input_map=mapping,
                              return_elements=[cut.bottleneck], name=name)
  depth = int(np.prod(out.shape.as_list()[1:]))
  return TrainableTop(inputs, variables, tf.reshape(out, [-1, depth]))


def frozen_with_values(graph_def: tf1.GraphDef,
                       values: Dict[str, np.ndarray]) -> tf1.GraphDef:
  """A copy of the GraphDef where each tensor of `values` ("node:0") is a
  constant with the given value: how fine-tuned weights go back into a
  frozen model for export. The replaced nodes lose their inputs; nodes
  only they used stay, unused (an export strips them)."""
  out = tf1.GraphDef()
  out.CopyFrom(graph_def)
  by_name = {n.name: n for n in out.node}
  for tensor, value in values.items():
    name, _, index = tensor.partition(":")
    node = by_name.get(name)
    if node is None or index not in ("", "0"):
      raise ValueError(f"cannot replace {tensor}: not a node's first output")
    value = np.asarray(value, np.float32)
    node.op = "Const"
    del node.input[:]
    node.ClearField("attr")
    node.attr["dtype"].type = tf.float32.as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
  return out
