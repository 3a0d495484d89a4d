"""The unknown score's parts, against values worked out by hand."""

import numpy as np
import pytest

from retrain.training import unknown


def test_auroc_by_hand():
  # Pairs (unknown above known): 3 > 1, 3 > 2; 2.5 > 1, 2.5 > 2; 2 = 2
  # (half): 4.5 of 6.
  assert unknown.auroc([1, 2, 4], [3, 2.5]) == pytest.approx(4 / 6)
  assert unknown.auroc([1, 2], [2, 3]) == pytest.approx(3.5 / 4)
  assert unknown.auroc([1, 2], [5, 6]) == 1.0
  assert unknown.auroc([5, 6], [1, 2]) == 0.0
  assert unknown.auroc([], [1]) is None


def test_keep_rows_keeps_each_class_in_proportion():
  y = np.array([0] * 900 + [1] * 90 + [2] * 10)
  keep = unknown.keep_rows(y, 100)
  counts = np.bincount(y[keep], minlength=3)
  assert counts.tolist() == [90, 9, 1]
  assert np.all(np.diff(keep) > 0)
  np.testing.assert_array_equal(unknown.keep_rows(y[:50], 100),
                                np.arange(50))


def test_neighbour_score_is_the_kth_nearest_cosine_distance():
  x = np.array([[1, 0], [0, 1], [1, 1], [2, 0]], np.float32)
  y = np.array([0, 1, 0, 0])
  score = unknown.NeighbourScore.fit(x, y, k=2)
  # [3, 0] points along x: cosines 1, 0, 0.707, 1 -> 2nd nearest 1.
  # [0, 2]: cosines 0, 1, 0.707, 0 -> 2nd nearest 0.707.
  np.testing.assert_allclose(score(np.array([[3, 0], [0, 2]], np.float32)),
                             [0.0, 1 - np.sqrt(0.5)], atol=1e-6)
  assert score.megabytes == pytest.approx(4 * 2 * 4 / 1e6)


def test_threshold_accepts_the_asked_share():
  known = np.arange(100, dtype=np.float32)
  t = unknown.threshold(known, 0.95)
  assert np.mean(known <= t) == pytest.approx(0.95, abs=0.011)
