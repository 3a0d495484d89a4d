"""Outliers: images far from every other image of the set.

An image's score is the mean cosine similarity to its neighbours.K nearest
other images; it is an outlier when that is more than OUTLIER_Z robust
standard deviations (1.4826 median absolute deviations) below the median
score; at most MAX_SHARE of the images, farthest first. A list to look at,
not a verdict: real collections hold unusual photos of their own classes
too (README, "Audit", has what it finds among the planted photos).

Pure numpy; no TensorFlow.
"""

from typing import Tuple

import numpy as np

from retrain.audit.neighbours import Neighbours

OUTLIER_Z = 3.0
MAX_SHARE = 0.01


def scores(nb: Neighbours) -> np.ndarray:
  """float64 [n]: each image's robust z (higher: farther from the rest)."""
  score = nb.similarity.astype(np.float64).mean(1)
  median = np.median(score)
  spread = 1.4826 * np.median(np.abs(score - median))
  return (median - score) / max(spread, 1e-9)


def outliers(nb: Neighbours) -> Tuple[np.ndarray, np.ndarray]:
  """(indices, robust z) of the outliers, farthest first."""
  z = scores(nb)
  far = np.flatnonzero(z >= OUTLIER_Z)
  far = far[np.argsort(-z[far], kind="stable")][:int(MAX_SHARE * len(z)) + 1]
  return far, z[far]
