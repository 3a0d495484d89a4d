"""Statistics of one photo, computed from the array decoded for its
bottleneck (no second decode): what the audit's photo-quality findings
(audit/quality.py) are made of. Pure numpy.

Every statistic but the size is measured on the decoded array (the model's
input size), in grey (Rec. 601 luma) where it is about light:

  width, height   the file's own size, in pixels
  brightness      mean luma, 0..1
  dark_p95        95th percentile of luma: low when the whole photo is dark
  light_p5        5th percentile of luma: high when the whole photo is bright
  clipped         share of the lit pixels (luma >= 50/255) that are burnt
                  out (luma >= 250/255)
  contrast        standard deviation of luma, 0..0.5
  sharpness       log10 of the variance of the Laplacian of luma (in
                  0..255 units), on the array as decoded (the audit divides
                  it by luma's variance: blur, not low contrast)
  colour          mean over pixels of (largest - smallest channel) / 255:
                  near 0 for grey photos
  entropy         Shannon entropy of the 256-bin luma histogram, in bits
                  (0..8): low for an almost flat photo
"""

from typing import Tuple

import numpy as np

NAMES = ("width", "height", "brightness", "dark_p95", "light_p5", "clipped",
         "contrast", "sharpness", "colour", "entropy")
COUNT = len(NAMES)
INDEX = {name: i for i, name in enumerate(NAMES)}
# Bumped when a statistic changes meaning: old cached values are then
# recomputed (it is part of their cache tag).
VERSION = 1

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_LEVELS = np.arange(256, dtype=np.float64)


def _laplacian_variance(grey: np.ndarray) -> float:
  """Variance of the 4-neighbour Laplacian of grey [h, w] (interior)."""
  if grey.shape[0] < 3 or grey.shape[1] < 3:
    return 0.0
  lap = (4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1]
         - grey[1:-1, :-2] - grey[1:-1, 2:])
  return float(lap.var())


def compute(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
  """float32 [H, W, 3] RGB in 0..255 (as decoded for the model) and the
  file's (width, height) -> float32 [COUNT], in NAMES order."""
  image = np.asarray(image, np.float32)
  grey = image @ _LUMA  # [H, W], 0..255
  levels = np.clip(grey + 0.5, 0, 255).astype(np.uint8)
  hist = np.bincount(levels.ravel(), minlength=256).astype(np.float64)
  p = hist / max(hist.sum(), 1.0)
  nz = p[p > 0]
  entropy = float(-(nz * np.log2(nz)).sum())
  cumulative = np.cumsum(p)
  p5 = float(np.searchsorted(cumulative, 0.05)) / 255.0
  p95 = float(np.searchsorted(cumulative, 0.95)) / 255.0
  lit = float(p[50:].sum())
  mean = float(p @ _LEVELS)  # Of the histogram: one pass fewer.
  std = float(np.sqrt(max(p @ np.square(_LEVELS) - mean * mean, 0.0)))
  # Colour on every other pixel each way: a statistic, a quarter the cost.
  quarter = image[::2, ::2]
  r, g, b = quarter[..., 0], quarter[..., 1], quarter[..., 2]
  spread = (np.maximum(np.maximum(r, g), b) -
            np.minimum(np.minimum(r, g), b))
  return np.array([
      size[0], size[1], mean / 255.0, p95, p5,
      float(p[250:].sum()) / lit if lit else 0.0, std / 255.0,
      np.log10(_laplacian_variance(grey) + 1e-3), spread.mean() / 255.0,
      entropy], np.float32)


def tag(model_tag: str) -> str:
  """The cache tag of the statistics of photos decoded as `model_tag`'s."""
  return f"{model_tag}.photostats{VERSION}"
