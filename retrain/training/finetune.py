"""Stage 2 of transfer learning: train the top of the CNN with the new layer.

Input: the cached cut vectors of the training and validation images
(features.cut.cut_feature_extractor), the cut, and the softmax layer that
stage 1 trained on bottlenecks. Each step runs only the trainable top,
forward and backward, on a sampled batch: SGD with momentum, BatchNorm in
inference mode (its statistics and scale are constants), the learning rate
falling to 0 along a cosine by default (SCHEDULES), the new layer's
weights decayed if asked. Validation accuracy and cross entropy are measured
before the first step (stage 1's model) and every `eval_interval` steps
(the curves); which model comes back is decided once, at the end (see
PICKS): the last step's if it beats stage 1 on validation, else stage 1's.

`run_stage` is the pipeline's stage: the cut's activations cached per image
like bottlenecks, then `fine_tune`, then the model to export.
"""

import dataclasses
import hashlib
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from cache.naming import model_tag
from retrain.config import HParams, RunConfig
from retrain.data import images
from retrain.features import bottlenecks
from retrain.features import cut as cuts
from retrain.features.model import FeatureExtractor
from retrain.features.sets import LabeledBottlenecks, by_paths
from retrain.training import schedules
from retrain.training import top as tops
from retrain.training.train import SAMPLERS, sample_subset

tf1 = tf.compat.v1

# Validation images per session.run when measuring accuracy.
_EVAL_BATCH = 256


class FineTuneParams(NamedTuple):
  """Stage-2 hyperparameters."""
  steps: int
  learning_rate: float  # At the first step (see SCHEDULES).
  momentum: float = 0.9
  batch_size: int = 32
  eval_interval: int = 10
  patience: int = 0  # Evaluations without improvement before stopping; 0: no.
  random_seed: int = 0
  class_sampling: str = "balanced"
  schedule: str = "cosine"  # A key of SCHEDULES.
  pick: str = "last"  # A key of PICKS.
  weight_decay: float = 0.0  # The loss + decay / 2 * |new layer's W|^2.


# The learning rate of step t of T (1-based), as a share of the first's
# (schedules.py; cosine by default, constant before).
SCHEDULES = schedules.SCHEDULES

# Which model stage 2 gives back. last: the model after the last step (the
# stop, with --fine_tune_patience), if its validation cross entropy is
# lower than stage 1's and its validation accuracy no lower; one comparison,
# so no luck in picking among many. best: of all evaluations, the lowest
# validation cross entropy that passes the paired test below (the
# behaviour before "last"). Measured with benchmarks/fine_tune.py and
# benchmarks/head_quality.py (see the README's "Fine-tuning").
PICKS = ("last", "best")


class StagePoint(NamedTuple):
  step: int
  train_accuracy: Optional[float]  # The step's batch; None at step 0.
  cross_entropy: Optional[float]
  validation_accuracy: float
  validation_cross_entropy: Optional[float] = None


# pick=best: a model is better than the best so far when its validation
# cross entropy is lower (by more than rounding: MIN_IMPROVEMENT), its
# validation accuracy is no lower than stage 1's, and it beats stage 1 by
# more than chance: the mean of the per-image drops in cross entropy from
# stage 1's model is above SIGNIFICANCE standard errors of that mean (a
# paired test on the same validation images). Cross entropy, not accuracy,
# picks the model: on a small validation set accuracy moves by whole
# images. The test matters because SGD's noise moves the validation cross
# entropy by a few percent from one evaluation to the next. Measured on the
# dev flowers (about 50 validation photos per run), --fine_tune_layers=2,
# 5-fold cross-validation: without it, stage 2 won on a noise dip after 10
# or 20 steps in 4 folds of 5 and lost 0.6 test points (MobileNet v1
# 0.25/224); picking by accuracy alone, a step that gained two validation
# photos by chance lost 3.8 test points (0.75/224, one split). See
# benchmarks/fine_tune.py.
MIN_IMPROVEMENT = 1e-4
SIGNIFICANCE = 2.0


@dataclasses.dataclass
class FineTuned:
  """The model stage 2 gives back (stage 1's, if none beat it)."""
  values: Dict[str, np.ndarray]  # Trainable tensor -> value (see Cut).
  weights: np.ndarray  # float32 [D, classes], the new layer.
  biases: np.ndarray  # float32 [classes].
  history: List[StagePoint]
  best_step: int  # The kept model's step; 0: stage 1's.
  baseline_validation_accuracy: float
  best_validation_accuracy: float  # Of the model kept.
  steps_run: int
  test_probabilities: Optional[np.ndarray] = None  # [n, classes], kept model.
  seconds: float = 0.0  # The steps and evaluations (no graph building).
  # The kept model's bottlenecks [n, D] of the sets asked for (`features`
  # of fine_tune), by name.
  features: Optional[Dict[str, np.ndarray]] = None

  @property
  def improved(self) -> bool:
    return self.best_step > 0


def fine_tune(graph_def: tf1.GraphDef, cut: cuts.Cut,
              shapes: Dict[str, List[Optional[int]]],
              train: LabeledBottlenecks,
              validation: LabeledBottlenecks,
              weights: np.ndarray, biases: np.ndarray, class_count: int,
              params: FineTuneParams,
              test: Optional[LabeledBottlenecks] = None,
              log: Callable[["StagePoint"], None] = lambda point: None,
              values: Optional[Dict[str, np.ndarray]] = None,
              features: Optional[Dict[str, LabeledBottlenecks]] = None
              ) -> FineTuned:
  """Trains the cut's top and the new layer; returns the best of them.

  Args:
    graph_def, cut, shapes: the frozen CNN, its cut, the cut's shapes.
    train: cut vectors [n, size] (in memory or memory-mapped rows) and
      labels; each step reads only the rows it samples.
    validation: cut vectors [m, size] and labels, measured at every
      evaluation, read _EVAL_BATCH at a time (may be memory-mapped).
    weights, biases: stage 1's layer, [D, classes] and [classes].
    test: cut vectors whose probabilities the best model gives back, read
      the same way.
    log: called with every evaluation's StagePoint.
    values: the cut's trainable constants (tops.constant_values), if known.
    features: named sets of cut vectors whose bottlenecks under the kept
      model are given back (FineTuned.features).
  """
  if params.schedule not in SCHEDULES or params.pick not in PICKS:
    raise ValueError(f"schedule {params.schedule!r} or pick {params.pick!r}")
  schedule = SCHEDULES[params.schedule]
  pick_best = params.pick == "best"
  rng = np.random.default_rng(params.random_seed)
  sampler = SAMPLERS[params.class_sampling](train.y, class_count, rng)
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(params.random_seed)
    vectors = tf1.placeholder(tf.float32, [None, train.x.shape[1]],
                              name="cut_vectors")
    labels = tf1.placeholder(tf.int64, [None], name="labels")
    # The top reads its inputs from the vectors: its placeholders are
    # mapped onto the split cut vector.
    parts = tops.split_cut_vector(vectors, cut, shapes)
    top = tops.build_trainable_top(graph_def, cut, shapes, input_map=parts,
                                   values=values)
    w = tf1.Variable(weights.astype(np.float32), name="final_weights")
    b = tf1.Variable(biases.astype(np.float32), name="final_biases")
    logits = tf.matmul(top.bottleneck, w) + b
    probabilities = tf.nn.softmax(logits)
    image_xent = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=logits)  # [batch]
    xent = tf.reduce_mean(image_xent)
    correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1), labels),
                                    tf.float32))
    loss = xent
    if params.weight_decay > 0:
      loss += 0.5 * params.weight_decay * tf.reduce_sum(tf.square(w))
    rate = tf1.placeholder(tf.float32, [], name="learning_rate")
    step_op = tf1.train.MomentumOptimizer(rate, params.momentum).minimize(loss)
    init = tf1.global_variables_initializer()
    tracked = dict(top.variables, __weights=w, __biases=b)
    restore_values = {k: tf1.placeholder(tf.float32, v.shape)
                      for k, v in tracked.items()}
    restore = tf.group(*[v.assign(restore_values[k])
                         for k, v in tracked.items()])
  graph.finalize()

  def batches(labeled: LabeledBottlenecks):
    """(vectors float32 [<= _EVAL_BATCH, size], labels) in order."""
    for start in range(0, len(labeled), _EVAL_BATCH):
      items = np.arange(start, min(start + _EVAL_BATCH, len(labeled)))
      yield labeled.take(items), labeled.y[items]

  def evaluate(sess) -> Tuple[float, float, np.ndarray]:
    """(validation accuracy, cross entropy, each image's cross entropy)."""
    right, losses = 0.0, [np.zeros([0], np.float32)]
    for x, y in batches(validation):
      r, l = sess.run([correct, image_xent], {vectors: x, labels: y})
      right += r
      losses.append(l)
    losses = np.concatenate(losses).astype(np.float64)
    n = max(len(validation), 1)
    return float(right) / n, float(losses.sum()) / n, losses

  def lower(a, b) -> bool:
    """Is evaluation a's cross entropy lower than b's, with an accuracy no
    lower than stage 1's? NaN, a diverged run, is never lower."""
    return bool(a[1] < b[1] * (1 - MIN_IMPROVEMENT) and a[0] >= baseline)

  def better(a, b) -> bool:
    """pick=best: is evaluation a better than b, and than stage 1 by more
    than chance (see SIGNIFICANCE)?"""
    if not lower(a, b):
      return False
    drops = stage1[2] - a[2]
    error = drops.std(ddof=1) / np.sqrt(len(drops)) if len(drops) > 1 else 0
    return bool(drops.mean() > SIGNIFICANCE * error)

  with tf1.Session(graph=graph) as sess:
    sess.run(init)
    start = time.monotonic()
    snapshot = sess.run(tracked)  # Stage 1's model.
    best_eval = stage1 = evaluate(sess)
    baseline = best = best_eval[0]
    history = [StagePoint(0, None, None, baseline, best_eval[1])]
    log(history[-1])
    best_step, since_best, step = 0, 0, 0
    for step in range(1, params.steps + 1):
      rows = sampler.sample(params.batch_size)
      feed = {vectors: train.take(rows), labels: train.y[rows],
              rate: params.learning_rate * float(schedule(step,
                                                          params.steps))}
      _, loss, right = sess.run([step_op, xent, correct], feed)
      if step % params.eval_interval == 0 or step == params.steps:
        current = evaluate(sess)
        val = current[0]
        history.append(StagePoint(step, float(right) / len(rows),
                                  float(loss), val, current[1]))
        log(history[-1])
        if pick_best and better(current, best_eval):
          best_eval, best_step, since_best = current, step, 0
          best = val
          snapshot = sess.run(tracked)
        elif not pick_best and lower(current, best_eval):
          best_eval, since_best = current, 0  # For the patience only.
        else:
          since_best += 1
          if params.patience and since_best >= params.patience:
            break
    # Every way out of the loop follows an evaluation of step `step`.
    if not pick_best and step and lower(current, stage1):
      best_step, best = step, current[0]
      snapshot = sess.run(tracked)
    seconds = time.monotonic() - start
    test_probabilities = None
    if test is not None or features:
      sess.run(restore, {restore_values[k]: v for k, v in snapshot.items()})
    if test is not None:
      test_probabilities = np.concatenate(
          [sess.run(probabilities, {vectors: x}) for x, _ in batches(test)]
          + [np.zeros([0, class_count], np.float32)])
    described = {
        name: np.concatenate(
            [sess.run(top.bottleneck, {vectors: x}) for x, _ in batches(s)]
            + [np.zeros([0, weights.shape[0]], np.float32)])
        for name, s in (features or {}).items()}
  values = {t: v for t, v in snapshot.items() if not t.startswith("__")}
  return FineTuned(values, snapshot["__weights"], snapshot["__biases"],
                   history, best_step, baseline, best, step,
                   test_probabilities, seconds, described)


# Stage 2 picks its model on the same validation images at every
# evaluation: all of them up to this many (or --validation_batch_size when
# larger; -1: all), so that the paired test (SIGNIFICANCE) has them all.
STAGE_VALIDATION_IMAGES = 1000


def stage_validation_size(validation_batch_size: int) -> int:
  """Validation images stage 2 measures (-1: all)."""
  if validation_batch_size < 0:
    return -1
  return max(validation_batch_size, STAGE_VALIDATION_IMAGES)


# Passes over the training set (augmented copies included) that the default
# number of fine-tuning steps makes. 20 rather than 10: MobileNet v1
# 0.25/224 on the cats and dogs with one flipped copy, 5 folds, stage 2
# gained 1.1 points over stage 1 with 20 and 0.8 with 10; on the dev
# flowers, stage 2 was kept in no fold either way (benchmarks/fine_tune.py).
DEFAULT_EPOCHS = 20


@dataclasses.dataclass(frozen=True)
class Stage:
  """What stage 2 did, and the model to export after it."""
  result: FineTuned
  cut: cuts.Cut
  fx: FeatureExtractor  # Fine-tuned weights inside, or the original model.
  parameters: int  # Trainable numbers in the CNN's top.
  seconds: float
  cut_vectors_computed: int
  params: FineTuneParams  # What it trained with.


def cut_vectors(image_lists: images.ImageLists, fx: FeatureExtractor,
                config: RunConfig, hparams: HParams):
  """The cut the flags ask for and every image's cut vector (and augmented
  copy's), from the cache or computed into it.

  Returns (cut, shapes, the cut's FeatureExtractor, sets by category,
  vectors computed).
  """
  cut = cuts.choose_cut(fx.graph_def, fx.bottleneck_tensor,
                        hparams.fine_tune_layers, hparams.fine_tune_from or None)
  shapes = cuts.cut_shapes(fx.graph_def, fx.input_tensor, fx.input_size, cut)
  cfx = cuts.cut_feature_extractor(fx, cut)
  logging.info("Fine-tuning cut at %s: %.1f KB per image in the cache",
               ", ".join(f"{t} {shapes[t][1:]}" for t in cut.inputs),
               cfx.bottleneck_size * 4 / 1024)
  sets, filled, augmented = bottlenecks.compute_bottlenecks(
      image_lists, cfx, config, hparams.random_seed, what="Cut activations")
  return cut, shapes, cfx, sets, filled.computed + augmented


def run_stage(image_lists: images.ImageLists, fx: FeatureExtractor,
              config: RunConfig, hparams: HParams, weights: np.ndarray,
              biases: np.ndarray, test_paths: List[str],
              log: Callable[[int, str], None] = lambda step, text: None,
              stage1_weight_decay: float = 0.0,
              features: Optional[Dict[str, List[str]]] = None) -> Stage:
  """Fine-tunes the top of the CNN after stage 1 (weights, biases).

  The cut's activations of every image (and augmented copy) are computed
  once into the bottleneck cache under their own model tag; the model kept
  gives the probabilities of `test_paths` (stage 1's test images). `log`
  gets every evaluation and the number of steps. The new layer's weight
  decay is --fine_tune_weight_decay, or stage1_weight_decay where that is -1.
  features: name -> paths of photos of any set (originals): their
  bottlenecks under the kept model come back in result.features[name], in
  that order.
  """
  start = time.monotonic()
  cut, shapes, cfx, sets, computed = cut_vectors(image_lists, fx, config,
                                                 hparams)
  # In memory within --max_in_memory_mb, else read from the cache files
  # where needed (a step reads its batch; evaluations read in batches).
  sets = bottlenecks.keep_in_memory(sets, config, "Cut activations")
  values = tops.constant_values(fx.graph_def, cut.trainable())
  parameters = int(sum(v.size for v in values.values()))
  logging.info("Fine-tuning %d layers (%s parameters): %s", len(cut.layers),
               f"{parameters:,}", ", ".join(cut.trainable()))
  train_set = sets[images.TRAINING]
  steps = hparams.fine_tune_steps or -(-DEFAULT_EPOCHS * len(train_set) //
                                      hparams.fine_tune_batch_size)
  params = FineTuneParams(
      steps, hparams.fine_tune_learning_rate or hparams.learning_rate / 10,
      hparams.fine_tune_momentum, hparams.fine_tune_batch_size,
      hparams.eval_step_interval, hparams.fine_tune_patience,
      hparams.random_seed, hparams.class_sampling,
      hparams.fine_tune_schedule, hparams.fine_tune_pick,
      (hparams.fine_tune_weight_decay if hparams.fine_tune_weight_decay >= 0
       else stage1_weight_decay))
  logging.info("Fine-tuning: %d steps of %d images (%s), learning rate %g "
               "(%s), momentum %g, weight decay %g; keeping the %s model if "
               "it beats stage 1 on validation", steps, params.batch_size,
               "--fine_tune_steps" if hparams.fine_tune_steps else
               f"about {DEFAULT_EPOCHS} passes over {len(train_set)} "
               "training images", params.learning_rate, params.schedule,
               params.momentum, params.weight_decay, params.pick)
  validation = sets[images.VALIDATION]
  rng = np.random.default_rng(hparams.random_seed + 3)
  pick = sample_subset(len(validation), stage_validation_size(
      hparams.validation_batch_size), rng)
  test_set = sets[images.TESTING]
  row = {p: i for i, p in enumerate(test_set.paths)}
  test_rows = np.array([row[p] for p in test_paths], np.int64)
  result = fine_tune(
      fx.graph_def, cut, shapes, train_set,
      validation.subset(pick), weights, biases,
      len(image_lists.labels),
      params, test=test_set.subset(test_rows),
      log=lambda point: log(point, steps), values=values,
      features=by_paths(sets, features or {}))
  tuned = fx
  if result.improved:
    logging.info("Fine-tuning: validation accuracy %.1f%% -> %.1f%% (%s "
                 "step %d of %d); exporting the fine-tuned model",
                 result.baseline_validation_accuracy * 100,
                 result.best_validation_accuracy * 100,
                 "the model after" if params.pick == "last" else "best at",
                 result.best_step, result.steps_run)
    digest = hashlib.sha1(cfx.tag.encode())
    for t in sorted(result.values):
      digest.update(np.ascontiguousarray(result.values[t]).tobytes())
    tuned = dataclasses.replace(
        fx, graph_def=tops.frozen_with_values(fx.graph_def, result.values),
        tag=model_tag(fx.tag.rsplit("-", 1)[0] + "_tuned",
                      digest.hexdigest()),
        source=f"{fx.source} (fine-tuned)")
  else:
    logging.info("Fine-tuning %s stage 1 on validation (cross entropy; "
                 "accuracy %.1f%%); exporting stage 1's model",
                 "ended without beating" if params.pick == "last" else
                 "never beat", result.baseline_validation_accuracy * 100)
  return Stage(result, cut, tuned, parameters, time.monotonic() - start,
               computed, params)
