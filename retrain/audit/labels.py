"""Likely label errors: out-of-fold probabilities and confident learning.

Every image is predicted by a softmax layer that never saw it: the images
are split into FOLDS stratified folds and one layer per fold is trained on
the other folds, all FOLDS layers side by side in one [D, FOLDS * C] matrix
on shared batches (each layer learns from the rows of the batch outside its
fold), with the run's learning rate, batch size, sampling and weight decay
for up to MAX_STEPS steps: the cost of about half a training.

Confident learning (Northcutt et al., 2021) picks the likely errors: an
image filed as i counts toward the confident joint C[i, j] when p_j >= t_j
for some class (t_j: the mean probability of class j over the images filed
as j), j the most probable such class; C is scaled so that row i sums to
the images filed as i; then for each i != j the round(C[i, j]) images filed
as i with the largest p_j - p_i are listed ("prune by noise rate", the rule
cleanlab's find_label_issues uses by default), except those predicted as
filed; the suggestion is the most probable other class. They are ranked by self-confidence p_i, lowest (the model surest the folder is
wrong) first: on the planted folder that puts more real errors in the top
25 than ranking by the margin p_j - p_i (0.72 vs 0.60 with MobileNet
0.25/128, 0.92 vs 0.88 with 0.75/224).
"""

import dataclasses
from typing import Optional

import numpy as np

from retrain.config import HParams
from retrain.training import side_by_side, solver

FOLDS = 5
MAX_STEPS = 1000  # More steps fit the planted errors no better.
# Weight decay of the fold layers when --weight_decay is left to the search
# (which runs after the audit): the search's usual pick on small sets.
DEFAULT_WEIGHT_DECAY = 1e-2
# Training rows of all folds together, at most (a random sample of more).
MAX_ROWS = 200_000


@dataclasses.dataclass(frozen=True)
class LabelIssues:
  """index: int64 [m] images, most sure first (lowest probability of
  their folder's class); suggested: int64 [m], the
  class each likely belongs to; margin: float32 [m], p_suggested -
  p_labeled; thresholds: float32 [C], the per-class t_j."""
  index: np.ndarray
  suggested: np.ndarray
  margin: np.ndarray
  thresholds: np.ndarray


def out_of_fold(x, y: np.ndarray, class_count: int, hparams: HParams,
                folds: int = FOLDS, steps: Optional[int] = None,
                block: int = 65536) -> np.ndarray:
  """float32 [n, C]: each row of x [n, D] predicted by the layer of the
  folds it is not in (see module docstring). x may be read on demand
  (findings.Rows): only the training sample (at most MAX_ROWS rows) is held
  in memory, the predictions are made a block at a time."""
  n = len(x)
  rng = np.random.default_rng(hparams.random_seed)
  fold = side_by_side.fold_of(y, folds, rng)
  steps = steps or min(hparams.how_many_training_steps, MAX_STEPS)
  if n > MAX_ROWS:  # The layers train on a sample; all are predicted.
    sample = np.sort(rng.choice(n, MAX_ROWS, replace=False))
  else:
    sample = np.arange(n)
  rows = side_by_side.batches(y[sample], class_count, hparams, steps, rng)
  decay = (hparams.weight_decay if hparams.weight_decay >= 0
           else DEFAULT_WEIGHT_DECAY)
  layers = side_by_side.train_layers(
      np.asarray(x[sample], np.float32), y[sample], rows, class_count, folds,
      hparams.learning_rate, decay, max(hparams.label_smoothing, 0.0),
      hparams.random_seed, fold=fold[sample], held_out=range(folds))
  probabilities = np.empty((n, class_count), np.float32)
  for start in range(0, n, block):
    stop = min(n, start + block)
    every = layers.logits(x[start:stop])  # [n, K, C]
    probabilities[start:stop] = np.exp(solver.log_softmax(
        every[np.arange(stop - start), fold[start:stop]]))
  return probabilities


def confident_learning(probabilities: np.ndarray, y: np.ndarray
                       ) -> LabelIssues:
  """The likely label errors among probabilities [n, C] with labels y [n]
  (see module docstring)."""
  n, c = probabilities.shape
  thresholds = np.ones(c, np.float32)
  for j in range(c):
    if np.any(y == j):
      thresholds[j] = probabilities[y == j, j].mean()
  above = probabilities >= thresholds[None, :]
  candidate = np.where(above, probabilities, -1.0).argmax(1)
  counted = above.any(1)
  # The confident joint: images filed as i whose class is confidently j,
  # calibrated so that row i sums to the number filed as i.
  joint = np.zeros((c, c))
  np.add.at(joint, (y[counted], candidate[counted]), 1)
  filed = np.bincount(y, minlength=c).astype(float)
  joint *= (filed / np.maximum(joint.sum(1), 1))[:, None]
  issue = np.zeros(n, bool)
  for i in range(c):
    mine = np.flatnonzero(y == i)
    for j in range(c):
      count = int(round(joint[i, j]))
      if i == j or not count or not len(mine):
        continue
      margin = probabilities[mine, j] - probabilities[mine, i]
      issue[mine[np.argsort(-margin, kind="stable")[:count]]] = True
  # An image its model predicts as filed is no issue; the suggestion is
  # the most probable other class.
  issue &= probabilities.argmax(1) != y
  index = np.flatnonzero(issue)
  others = probabilities[index].copy()
  others[np.arange(len(index)), y[index]] = -1.0
  suggested = others.argmax(1)
  margin = (probabilities[index, suggested] -
            probabilities[index, y[index]]).astype(np.float32)
  order = np.argsort(probabilities[index, y[index]], kind="stable")
  return LabelIssues(index[order], suggested[order], margin[order],
                     thresholds)
