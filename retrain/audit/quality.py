"""Photo-quality findings from each photo's statistics (data/photo_stats.py):
blurry, dark, light (overexposed), grayscale, odd_size, odd_aspect_ratio,
low_information, each with the statistic that decided it as its score.

Thresholds are absolute where a property means the same in every data set
(a photo whose brightest pixels are dark is dark; a grey photo has no
colour) and relative to the data set where "normal" depends on it (size,
shape, sharpness: a set of thumbnails or panoramas is not odd). A photo
gets the finding that explains it: an almost flat photo is not also called
blurry or dark; a thumbnail is not also called blurry. Pure numpy.
"""

import dataclasses
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from retrain.data import photo_stats

KINDS = ("blurry", "dark", "light", "grayscale", "odd_size",
         "odd_aspect_ratio", "low_information")

# dark: the 95th percentile of luma below this (most of the photo black).
DARK_P95 = 0.25
# light: mean luma above this, or its 5th percentile above LIGHT_P5
# (nothing dark left), or this share of the lit pixels burnt out.
LIGHT_MEAN = 0.75
LIGHT_P5 = 0.55
LIGHT_CLIPPED = 0.4
# grayscale: channels this close on average (of 1), and relative to the
# brightness (a dark photo has little spread, yet colour).
GRAY_COLOUR = 0.01
GRAY_RELATIVE = 0.05
# low_information: luma's standard deviation below this (of 1), or its
# histogram's entropy below LOW_ENTROPY bits.
FLAT_CONTRAST = 0.02
LOW_ENTROPY = 1.0
# blurry: contrast-normalised sharpness (log10 of the Laplacian's variance
# over luma's variance) this many decades below the data set's median.
BLUR_DECADES = 1.5
# odd_size: area below this share of the median area and the shorter side
# below half the model's input; odd_aspect_ratio: the longer side over the
# shorter above ASPECT_LIMIT and width/height this many times the median's
# (or its inverse).
SIZE_SHARE = 1 / 16
ASPECT_LIMIT = 3.0
ASPECT_FACTOR = 2.2


@dataclasses.dataclass(frozen=True)
class Finding:
  index: int  # Row of the statistics.
  issue: str  # One of KINDS.
  score: float  # The statistic that decided it (see thresholds()).


def normalised_sharpness(stats: np.ndarray) -> np.ndarray:
  """float [n]: log10(Laplacian variance / luma variance), in 0..255 units."""
  i = photo_stats.INDEX
  contrast = np.maximum(stats[:, i["contrast"]] * 255.0, 1.0)
  return stats[:, i["sharpness"]] - 2 * np.log10(contrast)


def find(stats: np.ndarray, input_size: Tuple[int, int]) -> List[Finding]:
  """The findings of photos with statistics stats [n, photo_stats.COUNT],
  decoded for a model taking input_size (H, W); worst first within each
  kind, kinds in KINDS order."""
  stats = np.asarray(stats, np.float64)
  if not len(stats):
    return []
  i = photo_stats.INDEX
  col = lambda name: stats[:, i[name]]
  width, height = col("width"), col("height")
  flat = (col("contrast") < FLAT_CONTRAST) | (col("entropy") < LOW_ENTROPY)
  dark = (col("dark_p95") < DARK_P95) & ~flat
  light = ((col("brightness") > LIGHT_MEAN) | (col("light_p5") > LIGHT_P5)
           | (col("clipped") > LIGHT_CLIPPED)) & ~flat
  area = width * height
  small = ((area < SIZE_SHARE * np.median(area)) &
           (np.minimum(width, height) < min(input_size) / 2))
  aspect = np.log(np.maximum(width, 1) / np.maximum(height, 1))
  odd_shape = ((np.abs(aspect) > np.log(ASPECT_LIMIT)) &
               (np.abs(aspect - np.median(aspect)) > np.log(ASPECT_FACTOR)))
  sharp = normalised_sharpness(stats)
  blurry = (sharp < np.median(sharp) - BLUR_DECADES) & ~flat & ~small
  grey = ((col("colour") < GRAY_COLOUR) &
          (col("colour") < GRAY_RELATIVE * np.maximum(col("brightness"),
                                                      0.05)))
  found: List[Finding] = []
  # (kind, rows, score, worst first: ascending scores?)
  for kind, rows, score, ascending in (
      ("blurry", blurry, sharp, True),
      ("dark", dark, col("dark_p95"), True),
      ("light", light, col("brightness"), False),
      ("grayscale", grey, col("colour"), True),
      ("odd_size", small, area / np.median(area), True),
      ("odd_aspect_ratio", odd_shape, np.exp(np.abs(
          aspect - np.median(aspect))), False),
      ("low_information", flat, col("contrast"), True)):
    index = np.flatnonzero(rows)
    order = np.argsort(score[index] if ascending else -score[index],
                       kind="stable")
    found += [Finding(int(j), kind, float(score[j])) for j in index[order]]
  return found


def thresholds(stats: np.ndarray) -> Dict[str, object]:
  """What the findings were measured against (for audit.json)."""
  stats = np.asarray(stats, np.float64)
  sharp = normalised_sharpness(stats) if len(stats) else np.zeros([0])
  i = photo_stats.INDEX
  area = stats[:, i["width"]] * stats[:, i["height"]]
  return dict(
      blurry=dict(score="log10(Laplacian variance / luma variance)",
                  below=round(float(np.median(sharp) - BLUR_DECADES), 4)
                  if len(sharp) else None),
      dark=dict(score="95th percentile of luma (0..1)", below=DARK_P95),
      light=dict(score="mean luma (0..1)", above=LIGHT_MEAN,
                 or_5th_percentile_above=LIGHT_P5,
                 or_burnt_out_share_of_lit_pixels_above=LIGHT_CLIPPED),
      grayscale=dict(score="mean channel spread (0..1)", below=GRAY_COLOUR,
                     and_below_brightness_times=GRAY_RELATIVE),
      odd_size=dict(score="area / the median area", below=SIZE_SHARE,
                    median_area=float(np.median(area)) if len(area)
                    else None),
      odd_aspect_ratio=dict(score="aspect ratio / the median's (or its "
                            "inverse)", above=ASPECT_FACTOR,
                            and_longer_over_shorter_above=ASPECT_LIMIT),
      low_information=dict(score="standard deviation of luma (0..1)",
                           below=FLAT_CONTRAST,
                           or_entropy_bits_below=LOW_ENTROPY))


def counts(findings: Sequence[Finding]) -> Dict[str, int]:
  out = {k: 0 for k in KINDS}
  for f in findings:
    out[f.issue] += 1
  return out


def attach(audit, stats_paths: Sequence[str], stats: np.ndarray,
           paths: Sequence[str], labels: Sequence[str], sets: Sequence[str],
           input_size: Tuple[int, int]):
  """The audit (findings.Audit) with the photo-quality findings of the
  audited photos (paths, with their labels and sets) that have statistics
  (stats [m, photo_stats.COUNT] of stats_paths): audit.quality, worst first
  within each kind, and audit.quality_thresholds."""
  import dataclasses as dc  # pylint: disable=g-import-not-at-top,reimported
  row = {p: i for i, p in enumerate(stats_paths)}
  have = [k for k, p in enumerate(paths) if p in row]
  values = (np.stack([stats[row[paths[k]]] for k in have]) if have
            else np.zeros([0, photo_stats.COUNT], np.float32))
  found = find(values, input_size)
  rows = [dict(path=paths[have[f.index]], label=labels[have[f.index]],
               set=sets[have[f.index]], issue=f.issue,
               score=round(f.score, 4)) for f in found]
  return dc.replace(audit, quality=rows,
                    quality_thresholds=dict(thresholds(values),
                                            photos=len(have)))


def by_kind(rows: Sequence[Mapping[str, object]]
            ) -> Dict[str, List[Mapping[str, object]]]:
  """audit.json's quality rows grouped by kind, in KINDS order."""
  out = {k: [] for k in KINDS}
  for r in rows:
    out.setdefault(str(r["issue"]), []).append(r)
  return out
