"""Independent NumPy references, used by the differential tests.

Each reference is written from its paper's definition, mostly in float64
NumPy with plain Python loops, and imports nothing from ``distoptax``. The
per-rule test files and ``test_robust_rules.py`` compare the library's rules
with these.
"""

import itertools
import math

import numpy as np


# ------------------------------------------------------------ distances
def _squared_distances_and_bad(x):
  """Pairwise squared distances in float64 and the non-finite rows."""
  x = np.asarray(x, np.float64)
  bad = ~np.all(np.isfinite(x), axis=1)
  with np.errstate(invalid="ignore", over="ignore"):
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  d[bad, :] = np.inf
  d[:, bad] = np.inf
  np.fill_diagonal(d, 0.0)
  return d, bad


def ref_squared_distances(x):
  """Direct pairwise squared distances in float64; non-finite rows: +inf."""
  return _squared_distances_and_bad(x)[0]


# ------------------------------------------------------------ coordinate-wise
def np_median(x):
  """Coordinate-wise median, midpoint of the two middle values."""
  s = np.sort(x.astype(np.float64), axis=0)
  n = len(s)
  return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def np_trimmed_mean(x, f):
  """Yin et al.: drop the f largest and f smallest values per coordinate."""
  s = np.sort(x.astype(np.float64), axis=0)
  return s[f:len(s) - f].mean(axis=0)


def np_mean_of_closest(x, keep, center):
  """Mean of the `keep` values nearest `center`; stable: lowest index wins."""
  x = x.astype(np.float64)
  order = np.argsort(np.abs(x - center), axis=0, kind="stable")[:keep]
  return np.take_along_axis(x, order, axis=0).mean(axis=0)


def np_meamed(x, f):
  """Xie et al. (arXiv:1802.10116): n - f values closest to the median."""
  return np_mean_of_closest(x, len(x) - f, np_median(x))


def np_phocas(x, f):
  """Xie et al. (arXiv:1805.09682): n - f values closest to TrMean_f."""
  return np_mean_of_closest(x, len(x) - f, np_trimmed_mean(x, f))


# ------------------------------------------------------------ Krum
def ref_scores(x, f):
  """Blanchard et al.: sum of squared distances to the n - f - 2 nearest."""
  d = ref_squared_distances(x)
  n = len(d)
  scores = []
  for i in range(n):
    others = sorted(d[i, j] for j in range(n) if j != i)
    scores.append(sum(others[:n - f - 2]))
  return np.array(scores)


def ref_krum_index(x, f):
  scores = ref_scores(x, f)
  return min(range(len(scores)), key=lambda i: (scores[i], i))


def ref_multi_krum(x, f, m):
  scores = ref_scores(x, f)
  chosen = sorted(range(len(scores)), key=lambda i: (scores[i], i))[:m]
  return np.asarray(x, np.float64)[chosen].mean(0), sorted(chosen)


# ------------------------------------------------------------ Bulyan
def ref_recursive_selection(x, f):
  """El Mhamdi et al. 2018: theta = n - 2f rounds of Krum on the pool."""
  d, bad = _squared_distances_and_bad(x)
  n = len(x)
  pool = list(range(n))
  chosen = []
  for _ in range(n - 2 * f):
    r = len(pool)
    scores = {}
    for i in pool:
      others = sorted(d[i, j] for j in pool if j != i)
      scores[i] = np.inf if bad[i] else sum(others[:max(r - f - 2, 0)])
    best = min(pool, key=lambda i: (scores[i], i))
    chosen.append(best)
    pool.remove(best)
  return chosen


def ref_bulyan(x, f):
  chosen = sorted(ref_recursive_selection(x, f))
  sel = np.asarray(x, np.float64)[chosen]
  sel = np.where(np.isnan(sel), np.inf, sel)
  theta = len(chosen)
  beta = theta - 2 * f
  out = np.empty(sel.shape[1])
  for k in range(sel.shape[1]):
    col = sel[:, k]
    med = np.median(col)  # Midpoint of the two middle values for even theta.
    with np.errstate(invalid="ignore"):
      order = np.argsort(np.abs(col - med), kind="stable")  # Lowest index.
    out[k] = col[order[:beta]].mean()
  return out, chosen


# ------------------------------------------------------------ MDA
def ref_mda(x, f):
  """Brute force over subsets of size n - f, lexicographic ties."""
  d = ref_squared_distances(x)
  n = len(x)
  best, best_diam = None, np.inf
  for subset in itertools.combinations(range(n), n - f):
    diam = max((d[i, j] for i in subset for j in subset), default=0.0)
    if best is None or diam < best_diam:
      best, best_diam = subset, diam
  return np.asarray(x, np.float64)[list(best)].mean(0), list(best)


# ------------------------------------------------------------ clipping
def ref_clip(x, c):
  x = np.asarray(x, np.float64)
  norms = np.linalg.norm(x, axis=1)
  with np.errstate(divide="ignore", invalid="ignore"):
    factor = np.where(norms > c, c / norms, 1.0)
  factor = np.where(np.isfinite(norms), factor, 0.0)
  out = x * factor[:, None]
  out[~np.isfinite(norms)] = 0.0
  return out


def ref_arc(x, f):
  """Allouah et al. 2024: clip all to the (k+1)-th largest norm."""
  x = np.asarray(x, np.float64)
  n = len(x)
  k = int(np.floor(2 * (f / n) * (n - f) + 1e-12))
  norms = np.linalg.norm(x, axis=1)
  norms = np.where(np.isfinite(norms), norms, np.inf)
  c = sorted(norms, reverse=True)[k]
  return ref_clip(x, c)


# ------------------------------------------------------------ centered clipping
def ref_centered_clipping(steps, tau, iterations):
  """Karimireddy et al. 2021, v_0 = 0 then the previous aggregate."""
  v = np.zeros(steps[0].shape[1])
  outs = []
  for x in steps:
    x = np.asarray(x, np.float64)
    for _ in range(iterations):
      diff = x - v
      norms = np.linalg.norm(diff, axis=1)
      with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.minimum(1.0, tau / norms)
      factor = np.where(norms == 0, 1.0, factor)
      factor = np.where(np.isfinite(norms), factor, 0.0)
      diff = np.where(np.isfinite(norms)[:, None], diff, 0.0)
      v = v + (diff * factor[:, None]).mean(0)
    outs.append(v.copy())
  return outs


# ------------------------------------------------------------ pre-aggregation
def ref_nnm(x, f):
  """Allouah et al. 2023: mean of the n - f nearest, the row itself first."""
  d, bad = _squared_distances_and_bad(x)
  n = len(x)
  x64 = np.asarray(x, np.float64)
  out = np.empty_like(x64)
  for i in range(n):
    others = sorted((j for j in range(n) if j != i), key=lambda j: (d[i, j], j))
    group = [i] + others[: n - f - 1]
    out[i] = np.nan if bad[group].any() else x64[group].mean(0)
  return out


def ref_bucketing(x, perm, s):
  n = len(x)
  x = np.asarray(x, np.float64)
  return np.stack([x[perm[b * s:min((b + 1) * s, n)]].mean(0)
                   for b in range(math.ceil(n / s))])


# ------------------------------------------------------------ Zeno
def zeno_reference(stack, x, value_np, lr, rho, b, penalty="squared_norm"):
  """Zeno from the paper's definition, in float64, with a Python sort."""
  stack = np.asarray(stack, np.float64)
  n, d = stack.shape
  scores, finite = [], []
  for g in stack:
    ok = bool(np.all(np.isfinite(g)))
    pen = np.sum(g ** 2) if penalty == "squared_norm" else np.mean(g ** 2)
    s = value_np(x) - value_np(x - lr * g) - rho * pen if ok else -np.inf
    scores.append(-np.inf if np.isnan(s) else s)
    finite.append(ok)
  order = sorted(range(n), key=lambda i: (not finite[i], -scores[i], i))
  kept = sorted(order[:n - b])
  selected = np.zeros(n)
  selected[kept] = 1.0
  return stack[kept].mean(0), selected, np.array(scores)


# ------------------------------------------------------------ Byzantine SGD
class ByzantineSGDReference:
  """Algorithm 1 of the paper, step by step in float64 NumPy loops.

  Conventions as documented in the rule: lowest index wins the majority
  test, fallback to the most neighbours, even-n median = midpoint,
  non-finite distances = +inf, mean over the new good set.
  """

  def __init__(self, n, x1, v, t_a, t_b, scale=2.0, by_m=False):
    self.n, self.x1, self.v = n, np.asarray(x1, np.float64), v
    self.t_a, self.t_b, self.scale, self.by_m = t_a, t_b, scale, by_m
    self.a = np.zeros(n)
    self.b = np.zeros((n, self.x1.size))
    self.good = np.ones(n, bool)
    self.no_majority = 0

  def _centre(self, vs, radius):
    n = self.n

    def dist(i, j):
      with np.errstate(invalid="ignore"):
        value = np.linalg.norm(vs[i] - vs[j])
      return np.inf if np.isnan(value) else value

    counts = [sum(1 for j in range(n) if self.good[j] and dist(i, j) <= radius)
              if self.good[i] else -1 for i in range(n)]
    for i in range(n):
      if self.good[i] and counts[i] > n / 2:
        return [dist(i, j) for j in range(n)], True
    i = int(np.argmax(counts))
    return [dist(i, j) for j in range(n)], False

  def step(self, grads, x):
    grads = np.asarray(grads, np.float64)
    with np.errstate(invalid="ignore"):
      self.a = self.a + grads @ (np.asarray(x, np.float64) - self.x1)
      self.b = self.b + grads
    a = np.where(np.isnan(self.a), np.inf, self.a)
    with np.errstate(invalid="ignore"):
      a_med = np.median(a)
    dist_b, found_b = self._centre(self.b, self.t_b)
    dist_g, found_g = self._centre(grads, 2 * self.v)
    new = self.good.copy()
    for i in range(self.n):
      with np.errstate(invalid="ignore"):
        ok_a = abs(self.a[i] - a_med) <= self.scale * self.t_a
      new[i] &= bool(ok_a) and dist_b[i] <= self.scale * self.t_b and (
          dist_g[i] <= 4 * self.v)
    self.good = new
    self.no_majority += not (found_b and found_g)
    denom = self.n if self.by_m else max(new.sum(), 1)
    return grads[new].sum(0) / denom if new.any() else np.zeros(grads.shape[1])


# ------------------------------------------------------------ top-k
def reference_top_k(x, k):
  """NumPy: the k largest |x| (NaN largest), ties to the lowest index."""
  x = np.asarray(x)
  mag = np.abs(x.astype(np.float64))
  mag = np.where(np.isnan(mag), np.inf, mag)
  # +inf and NaN both map to inf here; order NaN above inf explicitly.
  nan = np.isnan(x).astype(np.int8)
  order = np.lexsort((np.arange(x.size), -mag, -nan))
  return np.sort(order[:k])
