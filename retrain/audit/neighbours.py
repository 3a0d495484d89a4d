"""Each image's nearest neighbours by bottleneck cosine similarity.

Blocked matrix products over the (possibly memory-mapped) vectors: memory
stays at a few tiles whatever the number of images, and time grows as n^2 d.
Above PROJECT_ABOVE images the vectors are first projected on their top
PROJECTED_DIMS principal directions (the uncentred ones: they keep dot
products best), the neighbours found there, and their similarities then
recomputed exactly on the full vectors.

Pure numpy; no TensorFlow.
"""

import dataclasses
from typing import Optional

import numpy as np

# Neighbours kept per image (the K-th one is the density baseline of
# duplicates.py; the mean of all K the outlier score of outliers.py).
K = 5
ROW_BLOCK = 2048
COLUMN_BLOCK = 16384
PROJECT_ABOVE = 20_000
PROJECTED_DIMS = 128
# Rows of a large set the projection is fitted on.
PROJECTION_SAMPLE = 20_000
# Columns whose similarities bound each row's k-th neighbour from below.
SAMPLE_COLUMNS = 4096


@dataclasses.dataclass(frozen=True)
class Neighbours:
  """index: int64 [n, K], each row's K most similar other rows, most similar
  first; similarity: float32 [n, K], their cosine similarities."""
  index: np.ndarray
  similarity: np.ndarray


def _read(x, start: int, stop: int) -> np.ndarray:
  return np.asarray(x[start:stop], np.float32)


def unit_rows(x, project: Optional[np.ndarray] = None,
              block: int = 65536) -> np.ndarray:
  """float32 [n, d]: the rows of x [n, D] (an array or anything sliceable
  as one), times `project` [D, d] when given, scaled to unit length."""
  n = len(x)
  d = x.shape[1] if project is None else project.shape[1]
  out = np.empty((n, d), np.float32)
  for start in range(0, n, block):
    rows = _read(x, start, min(n, start + block))
    if project is not None:
      rows = rows @ project
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    out[start:start + len(rows)] = rows / np.maximum(norms, 1e-12)
  return out


def projection(x, dims: int, rng: np.random.Generator) -> np.ndarray:
  """float32 [D, dims]: the top right singular vectors of (a sample of)
  the unit rows of x."""
  n = len(x)
  pick = np.sort(rng.choice(n, size=min(n, PROJECTION_SAMPLE), replace=False))
  sample = np.array(x[pick], np.float32)
  sample /= np.maximum(np.linalg.norm(sample, axis=1, keepdims=True), 1e-12)
  gram = sample.T.astype(np.float64) @ sample
  _, vectors = np.linalg.eigh(gram)  # Ascending eigenvalues.
  return vectors[:, ::-1][:, :dims].astype(np.float32)


def nearest(x, k: int = K, seed: int = 0,
            project_above: int = PROJECT_ABOVE) -> Neighbours:
  """The k nearest other rows of x [n, D] by cosine similarity.

  x: an array, or rows read on demand (see findings.Rows): x[a:b] and
  x[int64 indices] give float32 rows.

  For each block of rows, the k-th largest similarity to SAMPLE_COLUMNS
  random columns is a lower bound of the true k-th; the full pass over all
  columns then keeps only the similarities at or above it (about
  k * n / SAMPLE_COLUMNS a row) and the k largest of those are exact.
  """
  n = len(x)
  k = max(1, min(k, n - 1))
  rng = np.random.default_rng(seed)
  projected = n > project_above and x.shape[1] > PROJECTED_DIMS
  basis = projection(x, PROJECTED_DIMS, rng) if projected else None
  z = unit_rows(x, basis)
  sample = np.sort(rng.choice(n, size=min(n, SAMPLE_COLUMNS),
                              replace=False))
  index = np.zeros((n, k), np.int64)
  similarity = np.full((n, k), -np.inf, np.float32)
  mask_buffer = np.empty((ROW_BLOCK, min(n, COLUMN_BLOCK)), bool)
  for r0 in range(0, n, ROW_BLOCK):
    r1 = min(n, r0 + ROW_BLOCK)
    rows = np.arange(r0, r1)
    first = z[r0:r1] @ z[sample].T
    first[sample[None, :] == rows[:, None]] = -np.inf
    # <= the true k-th (less a margin: the full pass's products may round
    # differently).
    bound = np.partition(first, -k, axis=1)[:, -k] - 1e-4
    found_r, found_c, found_s = [], [], []
    for c0 in range(0, n, COLUMN_BLOCK):
      c1 = min(n, c0 + COLUMN_BLOCK)
      tile = z[r0:r1] @ z[c0:c1].T  # [rows, columns]
      lo, hi = max(r0, c0), min(r1, c1)
      if lo < hi:  # An image is not its own neighbour.
        tile[np.arange(lo, hi) - r0, np.arange(lo, hi) - c0] = -np.inf
      mask = np.greater_equal(tile, bound[:, None],
                              out=mask_buffer[:r1 - r0, :c1 - c0])
      # flatnonzero is ~10x faster than the 2-d nonzero on a dense mask.
      r, c = np.divmod(np.flatnonzero(mask), c1 - c0)
      found_r.append(r)
      found_c.append(c + c0)
      found_s.append(tile[r, c])
    r, c, sims = (np.concatenate(found_r), np.concatenate(found_c),
                  np.concatenate(found_s))
    order = np.lexsort((c, -sims, r))  # By row, most similar first.
    r, c, sims = r[order], c[order], sims[order]
    rank = np.arange(len(r)) - np.searchsorted(r, r)
    keep = rank < k
    index[r0 + r[keep], rank[keep]] = c[keep]
    similarity[r0 + r[keep], rank[keep]] = sims[keep]
  if projected:
    similarity = _exact(x, index)
    order = np.argsort(-similarity, axis=1, kind="stable")
    index = np.take_along_axis(index, order, 1)
    similarity = np.take_along_axis(similarity, order, 1)
  return Neighbours(index, similarity)


def _exact(x, index: np.ndarray, block: int = 8192) -> np.ndarray:
  """float32 [n, k]: exact cosine similarity of each row and its listed
  neighbours, on the full vectors."""
  def take(ids):
    return np.array(x[ids], np.float32)
  n, k = index.shape
  out = np.empty((n, k), np.float32)
  for r0 in range(0, n, block):
    r1 = min(n, r0 + block)
    rows = take(np.arange(r0, r1))
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    flat = index[r0:r1].reshape(-1)
    unique, inverse = np.unique(flat, return_inverse=True)
    others = take(unique)
    others /= np.maximum(np.linalg.norm(others, axis=1, keepdims=True), 1e-12)
    out[r0:r1] = np.einsum("nd,nkd->nk", rows,
                           others[inverse].reshape(r1 - r0, k, -1))
  return out
