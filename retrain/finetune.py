"""Stage 2 of transfer learning: train the top of the CNN with the new layer.

Input: the cached cut vectors of the training and validation images
(finetune_graph.cut_feature_extractor), the cut, and the softmax layer that
stage 1 trained on bottlenecks. Each step runs only the trainable top,
forward and backward, on a sampled batch: SGD with momentum, BatchNorm in
inference mode (its statistics and scale are constants). Validation accuracy
is measured before the first step (stage 1's model) and every
`eval_interval` steps; the best weights are kept, training stops after
`patience` evaluations without improvement, and if stage 2 never beats
stage 1 on validation, stage 1's model is what comes back.

Not wired into the command line yet (issue 10): the pipeline stage, flags,
exports and reports come next.
"""

import dataclasses
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf

from retrain import finetune_graph as fg
from retrain.train import SAMPLERS

tf1 = tf.compat.v1

# Validation images per session.run when measuring accuracy.
_EVAL_BATCH = 256


class FineTuneParams(NamedTuple):
  """Stage-2 hyperparameters."""
  steps: int
  learning_rate: float
  momentum: float = 0.9
  batch_size: int = 32
  eval_interval: int = 10
  patience: int = 0  # Evaluations without improvement before stopping; 0: no.
  random_seed: int = 0
  class_sampling: str = "balanced"


class StagePoint(NamedTuple):
  step: int
  train_accuracy: Optional[float]  # The step's batch; None at step 0.
  cross_entropy: Optional[float]
  validation_accuracy: float


@dataclasses.dataclass
class FineTuned:
  """The best model stage 2 found (or stage 1's, if none was better)."""
  values: Dict[str, np.ndarray]  # Trainable tensor -> value (see Cut).
  weights: np.ndarray  # float32 [D, classes], the new layer.
  biases: np.ndarray  # float32 [classes].
  history: List[StagePoint]
  best_step: int  # 0: stage 1's model was never beaten.
  baseline_validation_accuracy: float
  best_validation_accuracy: float
  steps_run: int

  @property
  def improved(self) -> bool:
    return self.best_step > 0


def fine_tune(graph_def: tf1.GraphDef, cut: fg.Cut,
              shapes: Dict[str, List[Optional[int]]],
              train: Tuple[np.ndarray, np.ndarray],
              validation: Tuple[np.ndarray, np.ndarray],
              weights: np.ndarray, biases: np.ndarray, class_count: int,
              params: FineTuneParams) -> FineTuned:
  """Trains the cut's top and the new layer; returns the best of them.

  Args:
    graph_def, cut, shapes: the frozen CNN, its cut, the cut's shapes.
    train, validation: (cut vectors float32 [n, size], labels int64 [n]).
    weights, biases: stage 1's layer, [D, classes] and [classes].
  """
  rng = np.random.default_rng(params.random_seed)
  sampler = SAMPLERS[params.class_sampling](train[1], class_count, rng)
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(params.random_seed)
    vectors = tf1.placeholder(tf.float32, [None, train[0].shape[1]],
                              name="cut_vectors")
    labels = tf1.placeholder(tf.int64, [None], name="labels")
    # The top reads its inputs from the vectors: its placeholders are
    # mapped onto the split cut vector.
    parts = fg.split_cut_vector(vectors, cut, shapes)
    top = fg.build_trainable_top(graph_def, cut, shapes, input_map=parts)
    w = tf1.Variable(weights.astype(np.float32), name="final_weights")
    b = tf1.Variable(biases.astype(np.float32), name="final_biases")
    logits = tf.matmul(top.bottleneck, w) + b
    xent = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=logits))
    correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1), labels),
                                    tf.float32))
    step_op = tf1.train.MomentumOptimizer(
        params.learning_rate, params.momentum).minimize(xent)
    init = tf1.global_variables_initializer()
    tracked = dict(top.variables, __weights=w, __biases=b)
  graph.finalize()

  def accuracy(sess) -> float:
    x, y = validation
    right = 0.0
    for start in range(0, len(y), _EVAL_BATCH):
      right += sess.run(correct, {vectors: x[start:start + _EVAL_BATCH],
                                  labels: y[start:start + _EVAL_BATCH]})
    return right / max(len(y), 1)

  with tf1.Session(graph=graph) as sess:
    sess.run(init)
    snapshot = sess.run(tracked)  # Stage 1's model.
    baseline = best = accuracy(sess)
    history = [StagePoint(0, None, None, baseline)]
    best_step, since_best, step = 0, 0, 0
    for step in range(1, params.steps + 1):
      rows = sampler.sample(params.batch_size)
      feed = {vectors: train[0][rows], labels: train[1][rows]}
      _, loss, right = sess.run([step_op, xent, correct], feed)
      if step % params.eval_interval == 0 or step == params.steps:
        val = accuracy(sess)
        history.append(StagePoint(step, float(right) / len(rows),
                                  float(loss), val))
        if val > best:
          best, best_step, since_best = val, step, 0
          snapshot = sess.run(tracked)
        else:
          since_best += 1
          if params.patience and since_best >= params.patience:
            break
  values = {t: v for t, v in snapshot.items() if not t.startswith("__")}
  return FineTuned(values, snapshot["__weights"], snapshot["__biases"],
                   history, best_step, baseline, best, step)
