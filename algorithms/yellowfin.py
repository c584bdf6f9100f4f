r"""YellowFin: momentum SGD that tunes its own momentum and learning rate.

Every step measures, over exponential moving averages (EMA, factor
:math:`\beta`, zero-debiased) and a sliding window of :math:`w` steps:

* the curvature range :math:`[h_{min}, h_{max}]`: the smallest and largest
  :math:`h_t = \lVert g_t\rVert^2` in the window, smoothed in log space;
* the gradient variance :math:`C = \overline{\lVert g\rVert^2} -
  \lVert \bar g\rVert^2`;
* the distance to the optimum :math:`D = \overline{\,\overline{\lVert g
  \rVert} / \overline{\lVert g\rVert^2}\,}`;

and solves the one-step problem

.. math::
  \min_{\mu}\; \mu D^2 + \alpha^2 C, \quad
  \alpha = \frac{(1 - \sqrt\mu)^2}{h_{min}}, \quad
  \sqrt\mu \ge \frac{\sqrt{h_{max}/h_{min}} - 1}{\sqrt{h_{max}/h_{min}} + 1}

in closed form: :math:`x = \sqrt\mu` is the real root of :math:`(x - 1)^3
+ p\,x = 0`, :math:`p = D^2 h_{min}^2 / (2C)` (Vieta's substitution). The
step is heavy-ball momentum

.. math:: x_{t+1} = x_t + \mu_t (x_t - x_{t-1}) - \alpha_t g_t.

**Closed loop.** Asynchrony adds momentum of its own. With
``closed_loop=True`` the transform measures the total momentum of the run
from the iterates it is handed (``params``) and a gradient at the current
iterate (extra argument ``current_grads=``; without it the gradient it
steps on, which is only current in a synchronous run):

.. math::
  \hat\mu_T = \operatorname{median}_k
    \frac{x_{t,k} - x_{t-1,k} + \alpha_{t-1}\nabla f(x_{t-1})_k}
         {x_{t-1,k} - x_{t-2,k}}

over coordinates, and steers the algorithmic momentum with negative
feedback, :math:`\mu = \mu^* + \Delta\mu`, :math:`\Delta\mu \leftarrow
\Delta\mu + \gamma(\mu^* - \hat\mu_T)`.

Conventions (which source, where paper and code differ):
``third_party_notes/yellowfin.md``.
"""

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

EPS = 1e-6
"""The authors' guard against division by zero (their ``EPS``)."""


class YellowFinState(NamedTuple):
  """State of :func:`scale_by_yellowfin`.

  Attributes:
    step: updates so far (int32).
    window: ``float32[w]``, the last ``w`` values of :math:`h_t`, slot
      ``step % w``.
    log_h_min: EMA of :math:`\\log h_{min,t}` (not debiased).
    log_h_max: EMA of :math:`\\log h_{max,t}`.
    grad_avg: EMA of the gradient (a tree like the params).
    grad_norm_squared_avg: EMA of :math:`\\lVert g\\rVert^2`.
    grad_norm_avg: EMA of :math:`\\lVert g\\rVert`.
    dist_avg: EMA of :math:`D_t`.
    learning_rate: :math:`\\alpha` of the last step.
    momentum: the algorithmic :math:`\\mu` of the last step.
    target_momentum: YellowFin's :math:`\\mu^*` of the last step.
    velocity: :math:`x_{t+1} - x_t` of the last step (a tree).
    momentum_correction: the closed loop's :math:`\\Delta\\mu`.
    total_momentum: the last measured :math:`\\hat\\mu_T` (closed loop;
      NaN before the third step).
    loop: closed loop only, ``(x_{t-1}, x_{t-1} - x_{t-2},
      alpha_{t-1} grad f(x_{t-1}))``; ``()`` otherwise.
  """

  step: jax.Array
  window: jax.Array
  log_h_min: jax.Array
  log_h_max: jax.Array
  grad_avg: optax.Updates
  grad_norm_squared_avg: jax.Array
  grad_norm_avg: jax.Array
  dist_avg: jax.Array
  learning_rate: jax.Array
  momentum: jax.Array
  target_momentum: jax.Array
  velocity: optax.Updates
  momentum_correction: jax.Array
  total_momentum: jax.Array
  loop: Any = ()


class Estimates(NamedTuple):
  """YellowFin's measurements after one step (all debiased).

  Attributes:
    h_min: :math:`h_{min}`.
    h_max: :math:`h_{max}`.
    variance: :math:`C`.
    distance: :math:`D`.
  """

  h_min: jax.Array
  h_max: jax.Array
  variance: jax.Array
  distance: jax.Array


def _sq_norm(tree) -> jax.Array:
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
             for x in jax.tree.leaves(tree))


def _ema(avg, value, beta):
  return beta * avg + (1.0 - beta) * value


def _debias(count: jax.Array, beta: float) -> jax.Array:
  """:math:`1 - \beta^{count}`, accurate when it is small (``expm1``)."""
  return -jnp.expm1(count.astype(jnp.float32) * np.float32(np.log(beta)))


def estimates(state: YellowFinState, beta: float) -> Estimates:
  """The debiased measurements held in ``state`` (after its last update).

  Args:
    state: a state that has seen at least one gradient.
    beta: the EMA factor the state was built with.

  Returns:
    :class:`Estimates`.
  """
  debias = _debias(state.step, beta)
  h_min = jnp.exp(state.log_h_min / debias)
  h_max = jnp.exp(state.log_h_max / debias)
  grad_avg_sq = _sq_norm(jax.tree.map(lambda a: a / debias, state.grad_avg))
  variance = jnp.maximum(EPS, state.grad_norm_squared_avg / debias
                         - grad_avg_sq)
  return Estimates(h_min, h_max, variance, state.dist_avg / debias)


def single_step(est: Estimates) -> tuple[jax.Array, jax.Array]:
  r"""YellowFin's tuning rule: :math:`(\mu^*, \alpha^*)` from estimates.

  Args:
    est: the curvature range, variance and distance.

  Returns:
    ``(momentum, learning_rate)``.

  Example:
    >>> import jax.numpy as jnp
    >>> est = Estimates(jnp.float32(1.0), jnp.float32(100.0),
    ...                 jnp.float32(1e-12), jnp.float32(1.0))
    >>> mu, lr = single_step(est)   # Noise-free: the robust region's edge.
    >>> round(float(mu), 4), round(float(lr), 4)   # ((10-1)/(10+1))^2
    (0.6694, 0.0331)
  """
  p = ((est.distance + EPS) ** 2 * (est.h_min + EPS) ** 2 / 2.0
       / (est.variance + EPS))
  w3 = (-jnp.sqrt(p ** 2 + 4.0 / 27.0 * p ** 3) - p) / 2.0
  w = jnp.sign(w3) * jnp.abs(w3) ** (1.0 / 3.0)
  root = w - p / 3.0 / (w + EPS) + 1.0
  ratio = jnp.maximum((est.h_max + EPS) / (est.h_min + EPS), 1.0 + EPS)
  mu = jnp.maximum(root ** 2,
                   ((jnp.sqrt(ratio) - 1) / (jnp.sqrt(ratio) + 1)) ** 2)
  lr = (1.0 - jnp.sqrt(mu)) ** 2 / (est.h_min + EPS)
  return mu, lr


def _check(name: str, value: Any, low: float, high: float,
           open_low: bool = True) -> float:
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, float, np.number)):
    raise TypeError(f"{name} must be a real number; got {value!r}")
  x = float(value)
  ok = (x > low if open_low else x >= low) and x < high
  if not np.isfinite(x) or not ok:
    bracket = "(" if open_low else "["
    raise ValueError(f"{name} must lie in {bracket}{low:g}, {high:g}); got "
                     f"{value!r}")
  return x


def scale_by_yellowfin(
    beta: float = 0.999,
    curvature_window: int = 20,
    *,
    initial_learning_rate: float = 1e-4,
    initial_momentum: float = 0.0,
    smooth_hyperparameters: bool = False,
    warmup: bool = True,
    closed_loop: bool = False,
    closed_loop_gain: float = 0.01,
) -> optax.GradientTransformationExtraArgs:
  r"""YellowFin's tuned heavy-ball step, returned with a gradient's sign.

  ``update`` returns :math:`-(x_{t+1} - x_t) = \alpha_t g_t - \mu_t
  (x_t - x_{t-1})`; chain it with ``optax.scale(-1.0)`` (what
  :func:`yellowfin` does) to descend.

  Args:
    beta: EMA factor :math:`\beta \in (0, 1)` (paper and code: 0.999).
    curvature_window: :math:`w \ge 1` (paper and code: 20).
    initial_learning_rate: :math:`\alpha` of the first step (the authors'
      code default 1e-4; their statistics start at the second step).
    initial_momentum: :math:`\mu` of the first step (0).
    smooth_hyperparameters: EMA :math:`\alpha` and :math:`\mu` with
      :math:`\beta` (the paper's Algorithm 1) instead of using each step's
      solution (the authors' code default, ``use_unsmoothed_lr_mu``).
    warmup: cap :math:`\alpha` by :math:`\alpha (t + 1) / (10 w)` (the
      authors' code).
    closed_loop: measure the total momentum and correct :math:`\mu`.
    closed_loop_gain: :math:`\gamma > 0` of the feedback (paper: 0.01).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a
    :class:`YellowFinState`; ``update`` needs ``params`` when
    ``closed_loop`` and reads the extra argument ``current_grads``.

  Raises:
    ValueError: for ``beta`` outside :math:`(0, 1)`, ``curvature_window <
      1``, a negative rate, a momentum outside :math:`[0, 1)` or a
      non-positive gain.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_yellowfin()
    >>> state = tx.init(jnp.zeros(2))
    >>> u, state = tx.update(jnp.array([3.0, 4.0]), state)
    >>> u   # The first step: alpha = 1e-4, mu = 0.
    Array([0.0003, 0.0004], dtype=float32)
    >>> round(float(estimates(state, 0.999).h_max), 3)   # |g|^2, one sample
    25.0

  References:
    Zhang, Mitliagkas, "YellowFin and the Art of Momentum Tuning", MLSys
    2019, arXiv:1706.03471.

  Guarantees:
    The returned step is the heavy ball :math:`x_{t+1} - x_t = \mu_t (x_t -
    x_{t-1}) - \alpha_t g_t` exactly (negated); :math:`\mu_t \in [0, 1)`
    without the loop, :math:`(-1, 1)` with it.
  """
  beta = _check("beta", beta, 0.0, 1.0)
  if isinstance(curvature_window, (bool, np.bool_)) or not isinstance(
      curvature_window, (int, np.integer)) or curvature_window < 1:
    raise ValueError(f"curvature_window must be an int >= 1; got "
                     f"{curvature_window!r}")
  width = int(curvature_window)
  lr0 = _check("initial_learning_rate", initial_learning_rate, 0.0,
               np.inf, open_low=False)
  mu0 = _check("initial_momentum", initial_momentum, 0.0, 1.0,
               open_low=False)
  gain = _check("closed_loop_gain", closed_loop_gain, 0.0, np.inf)

  def init_fn(params):
    zeros = jax.tree.map(
        lambda p: jnp.zeros(jnp.shape(p), jnp.promote_types(
            jnp.result_type(p), jnp.float32)), params)
    scalar = jnp.zeros((), jnp.float32)
    loop = (params, zeros, zeros) if closed_loop else ()
    return YellowFinState(
        step=jnp.zeros((), jnp.int32), window=jnp.zeros((width,),
                                                        jnp.float32),
        log_h_min=scalar, log_h_max=scalar, grad_avg=zeros,
        grad_norm_squared_avg=scalar, grad_norm_avg=scalar,
        dist_avg=scalar, learning_rate=jnp.float32(lr0),
        momentum=jnp.float32(mu0), target_momentum=jnp.float32(mu0),
        velocity=zeros, momentum_correction=scalar,
        total_momentum=jnp.float32(jnp.nan), loop=loop)

  def measure(state, params):
    """(total momentum, x_t - x_{t-1}) from the iterates handed in."""
    prev_params, prev_delta, prev_step = state.loop
    delta = jax.tree.map(lambda x, p, d: (x - p).astype(d.dtype), params,
                         prev_params, prev_delta)
    num = jnp.concatenate([jnp.ravel(d + s) for d, s in zip(
        jax.tree.leaves(delta), jax.tree.leaves(prev_step))])
    den = jnp.concatenate([jnp.ravel(d) for d in jax.tree.leaves(
        prev_delta)])
    ok = jnp.abs(den) > EPS * EPS
    ratio = jnp.where(ok, num / jnp.where(ok, den, 1.0), jnp.nan)
    measured = jnp.where(state.step >= 2, jnp.nanmedian(ratio), jnp.nan)
    return measured, delta

  def update_fn(updates, state, params=None, *, current_grads=None,
                **extra_args):
    del extra_args
    if closed_loop and params is None:
      raise ValueError("closed-loop yellowfin needs params (the iterate it "
                       "measures the total momentum from)")
    g = jax.tree.map(lambda u: u.astype(jnp.float32), updates)
    t = state.step
    sq = _sq_norm(g)
    h = sq + EPS
    window = state.window.at[t % width].set(h)
    valid = jnp.arange(width) < jnp.minimum(width, t + 1)
    h_min_t = jnp.log(jnp.min(jnp.where(valid, window, jnp.inf)) + EPS)
    h_max_t = jnp.log(jnp.max(jnp.where(valid, window, -jnp.inf)) + EPS)
    grad_norm_squared_avg = _ema(state.grad_norm_squared_avg, sq, beta)
    debias = _debias(t + 1, beta)
    grad_norm_avg = _ema(state.grad_norm_avg, jnp.sqrt(sq), beta)
    dist_t = (grad_norm_avg / debias) / (grad_norm_squared_avg / debias
                                         + EPS)
    new = state._replace(
        step=t + 1, window=window,
        log_h_min=_ema(state.log_h_min, h_min_t, beta),
        log_h_max=_ema(state.log_h_max, h_max_t, beta),
        grad_avg=jax.tree.map(lambda a, x: _ema(a, x, beta),
                              state.grad_avg, g),
        grad_norm_squared_avg=grad_norm_squared_avg,
        grad_norm_avg=grad_norm_avg,
        dist_avg=_ema(state.dist_avg, dist_t, beta))
    mu_star, lr = single_step(estimates(new, beta))
    if warmup:
      lr = jnp.minimum(lr, lr * (t + 1).astype(jnp.float32) / 10.0 / width)
    if smooth_hyperparameters:
      mu_star = _ema(state.target_momentum, mu_star, beta)
      lr = _ema(state.learning_rate, lr, beta)
    tune = t > 0
    mu_star = jnp.where(tune, mu_star, mu0)
    lr = jnp.where(tune, lr, lr0)
    correction = state.momentum_correction
    total = state.total_momentum
    loop = ()
    if closed_loop:
      total, delta = measure(state, params)
      correction = jnp.where(jnp.isfinite(total),
                             correction + gain * (state.target_momentum
                                                  - total), correction)
      fresh = g if current_grads is None else jax.tree.map(
          lambda c: c.astype(jnp.float32), current_grads)
      loop = (params, delta, jax.tree.map(lambda c: lr * c, fresh))
    # The feedback may push the algorithmic momentum below 0: asynchrony
    # alone can exceed the target.
    mu = jnp.clip(mu_star + correction, -1.0 + EPS if closed_loop else 0.0,
                  1.0 - EPS)
    velocity = jax.tree.map(lambda v, x: mu * v - lr * x, state.velocity, g)
    out = jax.tree.map(lambda v, u: (-v).astype(u.dtype), velocity, updates)
    return out, new._replace(
        learning_rate=lr, momentum=mu, target_momentum=mu_star,
        velocity=velocity, momentum_correction=correction,
        total_momentum=total, loop=loop)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def yellowfin(
    learning_rate_factor: float = 1.0,
    beta: float = 0.999,
    curvature_window: int = 20,
    *,
    closed_loop: bool = False,
    closed_loop_gain: float = 0.01,
    **kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
  r"""YellowFin: auto-tuned momentum SGD.

  ``optax.chain(scale_by_yellowfin(...), optax.scale(-learning_rate_factor))``
  where :func:`scale_by_yellowfin` tunes :math:`\mu_t` and :math:`\alpha_t`
  (see the module docstring) and ``learning_rate_factor`` is the authors'
  ``lr_factor`` (1 leaves YellowFin's rate alone; a schedule may decay it).

  Args:
    learning_rate_factor: multiplier of the tuned step.
    beta: EMA factor (0.999).
    curvature_window: the sliding window :math:`w` (20).
    closed_loop: measure the total momentum and correct :math:`\mu`
      (asynchronous runs; pass ``current_grads=``).
    closed_loop_gain: :math:`\gamma` (0.01).
    **kwargs: further options of :func:`scale_by_yellowfin`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from distoptax.algorithms.yellowfin import yellowfin
    >>> h = jnp.array([1.0, 10.0])   # f(x) = sum(h x^2) / 2.
    >>> tx = yellowfin()
    >>> x = jnp.array([1.0, 1.0])
    >>> state = tx.init(x)
    >>> for _ in range(400):
    ...   u, state = tx.update(h * x, state, x)
    ...   x = optax.apply_updates(x, u)
    >>> bool(jnp.sum(h * x ** 2) < 1e-3)
    True
    >>> bool(0.0 <= state[0].momentum < 1.0), int(state[0].step)
    (True, 400)

  References:
    Zhang, Mitliagkas, "YellowFin and the Art of Momentum Tuning", MLSys
    2019, arXiv:1706.03471. Mitliagkas, Zhang, Hadjis, Re, "Asynchrony
    begets momentum, with an application to deep learning", Allerton 2016,
    arXiv:1605.09774 (asynchrony as implicit momentum).

  Guarantees:
    On a quadratic, heavy ball with :math:`\sqrt\mu \ge (\sqrt\kappa - 1)
    / (\sqrt\kappa + 1)` and :math:`\alpha = (1 - \sqrt\mu)^2 / h_{min}`
    converges at the rate :math:`\sqrt\mu` on every curvature in
    :math:`[h_{min}, h_{max}]` (the robust region YellowFin keeps to;
    paper, Lemma 4). The estimators match a NumPy transcription of the
    authors' code on a quadratic of known curvature range (tested); the
    closed loop measures :math:`\hat\mu_T = \mu` in a synchronous run
    (tested).
  """
  return optax.chain(
      scale_by_yellowfin(beta, curvature_window, closed_loop=closed_loop,
                         closed_loop_gain=closed_loop_gain, **kwargs),
      optax.scale(-learning_rate_factor))
