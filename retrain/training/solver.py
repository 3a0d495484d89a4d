"""The new layer's convex problem, solved to its optimum on all rows at once.

For x [n, D] and integer labels y [n], a softmax layer W [D, C], b [C]
minimizes

  f(W, b) = mean_i CE(softmax(x_i W + b), t_i) + decay / 2 * |W|^2

t_i being y_i's one-hot vector smoothed to 1 - s / s (with s / C added
to every class), exactly the loss stage 1's SGD steps follow
(train.training_loss). For decay > 0 the problem is strongly convex: one
optimum, which SGD on sampled batches approaches and a full-batch
quasi-Newton method (L-BFGS) reaches in tens of passes over the rows.
That is what makes the regularization search cheap: a setting is scored
by its optimum, found in milliseconds, instead of by thousands of SGD
steps (regularization.py). The curvature at the optimum also says which
learning rate SGD can take (top_curvature).

Pure numpy: matrix products in float32 (the cached vectors' type), the
quasi-Newton state in float64.
"""

from typing import NamedTuple, Optional, Tuple

import numpy as np

# L-BFGS: pairs kept, Armijo constant, gradient tolerance (on the largest
# entry of the gradient) and at most this many iterations per solve.
MEMORY = 10
ARMIJO = 1e-4
TOLERANCE = 1e-5
MAX_ITERATIONS = 300


class Solution(NamedTuple):
  """w: float32 [D, C]; b: float32 [C]; the objective's value there, its
  gradient's largest entry, and the passes over the rows it took."""
  w: np.ndarray
  b: np.ndarray
  loss: float
  gradient: float
  evaluations: int


def targets(y: np.ndarray, class_count: int,
            smoothing: float = 0.0) -> np.ndarray:
  """float32 [n, C]: one-hot rows of y, smoothed to 1 - s + s / C and
  s / C."""
  t = np.full((len(y), class_count), smoothing / class_count, np.float32)
  t[np.arange(len(y)), y] += 1.0 - smoothing
  return t


def log_softmax(logits: np.ndarray) -> np.ndarray:
  """float64 log probabilities along the last axis."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def cross_entropy(x: np.ndarray, y: np.ndarray, w: np.ndarray,
                  b: np.ndarray) -> Tuple[float, float]:
  """(mean cross entropy, accuracy) of the layer on x [n, D], y [n]."""
  logits = np.asarray(x, np.float32) @ w + b
  log_p = log_softmax(logits)
  return (float(-log_p[np.arange(len(y)), y].mean()),
          float(np.mean(logits.argmax(1) == y)))


def _objective(x, t, decay, theta, d, c):
  """(f, gradient) at theta = [W.ravel(), b] (float64 [D * C + C])."""
  w = theta[:d * c].reshape(d, c)
  b = theta[d * c:]
  logits = x @ w.astype(np.float32) + b.astype(np.float32)
  log_p = log_softmax(logits)
  n = len(x)
  f = -float(np.sum(t * log_p)) / n + 0.5 * decay * float(np.sum(w * w))
  g = (np.exp(log_p) - t) / n  # d f / d logits, [n, C].
  gw = (x.T @ g.astype(np.float32)).astype(np.float64) + decay * w
  return f, np.concatenate([gw.ravel(), g.sum(0)])


def fit(x: np.ndarray, y: np.ndarray, class_count: int, decay: float,
        smoothing: float = 0.0, start: Optional[Solution] = None,
        tolerance: float = TOLERANCE,
        max_iterations: int = MAX_ITERATIONS) -> Solution:
  """The layer minimizing f (module docstring) on x [n, D], y [n], by
  L-BFGS from `start` (a solution of a nearby problem: along a path of
  decays each solve starts where the last ended) or from zero."""
  # Solved on centred rows, logits = (x - m) W + b', an exact change of
  # variables (b = b' - m W; the penalty is on W alone) that removes the
  # ill-conditioned coupling of b with the mean of non-negative features.
  x = np.asarray(x, np.float32)
  mean = x.mean(0)
  x = np.ascontiguousarray(x - mean)
  d, c = x.shape[1], class_count
  t = targets(y, c, smoothing)
  if start is None:
    theta = np.zeros(d * c + c)
  else:
    theta = np.concatenate([np.asarray(start.w, np.float64).ravel(),
                            np.asarray(start.b, np.float64) +
                            mean.astype(np.float64) @ start.w])
  f, g = _objective(x, t, decay, theta, d, c)
  evaluations = 1
  pairs = []  # (s, y, 1 / y.s)
  for _ in range(max_iterations):
    if np.max(np.abs(g)) <= tolerance:
      break
    direction = _two_loop(g, pairs)
    slope = float(g @ direction)
    if slope >= 0:  # Not a descent direction: restart from the gradient.
      pairs.clear()
      direction, slope = -g, -float(g @ g)
    step = 1.0 if pairs else min(1.0, 1.0 / max(np.max(np.abs(g)), 1e-12))
    while True:
      candidate = theta + step * direction
      f_new, g_new = _objective(x, t, decay, candidate, d, c)
      evaluations += 1
      if f_new <= f + ARMIJO * step * slope or step < 1e-10:
        break
      step *= 0.5
    s, change = candidate - theta, g_new - g
    curvature = float(change @ s)
    if curvature > 1e-12:
      pairs.append((s, change, 1.0 / curvature))
      del pairs[:-MEMORY]
    converged = abs(f - f_new) <= 1e-12 * max(1.0, abs(f))
    theta, f, g = candidate, f_new, g_new
    if converged:
      break
  w = theta[:d * c].reshape(d, c)
  return Solution(w.astype(np.float32),
                  (theta[d * c:] - mean.astype(np.float64) @ w
                   ).astype(np.float32), f,
                  float(np.max(np.abs(g))), evaluations)


def _two_loop(g, pairs):
  """-H g, H the L-BFGS inverse Hessian estimate from the kept pairs."""
  q = g.copy()
  alphas = []
  for s, change, rho in reversed(pairs):
    alpha = rho * float(s @ q)
    q -= alpha * change
    alphas.append(alpha)
  if pairs:
    s, change, _ = pairs[-1]
    q *= float(s @ change) / float(change @ change)
  for (s, change, rho), alpha in zip(pairs, reversed(alphas)):
    q += (alpha - rho * float(change @ q)) * s
  return -q


def top_curvature(x: np.ndarray, solution: Solution, decay: float,
                  iterations: int = 30, seed: int = 0) -> float:
  """The largest eigenvalue of f's Hessian (in W and b) at `solution`, by
  power iteration on Hessian-vector products over x [n, D]: plain
  gradient steps on f are stable below 2 / it."""
  x = np.ascontiguousarray(x, np.float32)
  n, d = x.shape
  c = solution.b.shape[0]
  p = np.exp(log_softmax(x @ solution.w + solution.b)).astype(np.float32)
  rng = np.random.default_rng(seed)
  v_w = rng.normal(size=(d, c)).astype(np.float32)
  v_b = rng.normal(size=c).astype(np.float32)
  value = 0.0
  for _ in range(iterations):
    norm = float(np.sqrt(np.sum(v_w.astype(np.float64) ** 2) +
                         np.sum(v_b.astype(np.float64) ** 2)))
    v_w, v_b = v_w / norm, v_b / norm
    z = x @ v_w + v_b  # [n, C]: the logits' change along v.
    r = p * (z - np.sum(p * z, 1, keepdims=True)) / n  # (diag p - p p') z.
    h_w = x.T @ r + decay * v_w
    h_b = r.sum(0)
    value = float(np.sum(h_w * v_w) + np.sum(h_b * v_b))
    v_w, v_b = h_w, h_b
  return value
