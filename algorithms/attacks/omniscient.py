"""Omniscient attacks: crafted from the honest workers' updates.

Inner product manipulation, A Little Is Enough and mimic. Every worker
gathers all updates (``collectives.all_gather``, which simulates the
adversary's knowledge and is not counted as protocol traffic), keeps the
honest rows only (the Byzantine workers' own updates never enter the
statistics) and computes the same crafted vector; Byzantine workers send it.
All Byzantine workers therefore send identical vectors, as in the papers.
"""

import math
import statistics
from typing import Sequence

import jax
import numpy as np
import optax

from distoptax.algorithms.attacks import base
from distoptax.worker_axis import collectives

ALIE_CONVENTIONS = ("paper", "epfml")


def inner_product_manipulation(
    num_byzantine: int | None = None,
    *,
    epsilon: float = 0.1,
    byzantine_mask: Sequence[bool] | None = None,
    axis_name: str = collectives.WORKERS,
) -> optax.GradientTransformationExtraArgs:
  r"""Inner product manipulation (IPM): send a small negative honest mean.

  With :math:`H` the set of honest workers,

  .. math::
    \tilde g_i = -\epsilon \, \frac{1}{|H|} \sum_{j \in H} g_j
    \quad (i \text{ Byzantine})

  Xie, Koyejo and Gupta show that a small :math:`\epsilon` (0.1) keeps the
  Byzantine vectors inside the honest cluster, so Krum selects them, while a
  large :math:`\epsilon` drags the median and the trimmed mean until their
  inner product with the true gradient turns negative.

  Conventions of peers: epfml ``IPMAttack(epsilon)`` is the same formula;
  ByzFL's ``FallOfEmpires(tau)`` sends :math:`(1 - \tau)` times the mean, i.e.
  :math:`\epsilon = \tau - 1`; Garfield's ``fall_empires_attack`` uses
  :math:`\epsilon = 10` on the mean of gradients the attacker computes
  itself (non-omniscient).

  Args:
    num_byzantine: ``f``, the first ``f`` workers are Byzantine.
    epsilon: :math:`\epsilon`.
    byzantine_mask: explicit Byzantine workers, ``n`` booleans.
    axis_name: the logical worker axis.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``optax.EmptyState``.

  References:
    Xie, Koyejo and Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD
    by Inner Product Manipulation", UAI 2019 (arXiv:1903.03936).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import distributed as dist
    >>> from distoptax.algorithms import attacks
    >>> tx = attacks.inner_product_manipulation(1, epsilon=0.5)
    >>> def step(g):
    ...   return tx.update(g, tx.init(g))[0]
    >>> g = jnp.array([[9.0], [1.0], [3.0]])  # honest mean 2
    >>> jax.vmap(step, axis_name=dist.WORKERS)(g)
    Array([[-1.],
           [ 1.],
           [ 3.]], dtype=float32)
  """

  def craft(updates, state, ctx):
    mean = base.honest_mean(base.gather_honest(updates, ctx))
    return jax.tree.map(lambda m: -epsilon * m, mean), state

  return base.make_attack("inner_product_manipulation", num_byzantine, craft,
                          byzantine_mask=byzantine_mask, axis_name=axis_name)


def alie_z(num_workers: int, num_byzantine: int, *,
           convention: str = "paper") -> float:
  r"""The z of A Little Is Enough, from ``n`` and ``f``.

  With :math:`s = \lfloor n/2 + 1 \rfloor - f` (the number of honest
  "supporters" the attackers need for a majority) and :math:`\Phi` the
  standard normal CDF:

  * ``"paper"`` (Baruch et al., NeurIPS 2019):
    :math:`z = \Phi^{-1}\big((n - s)/n\big)`; needs :math:`s \ge 1`, i.e.
    :math:`f \le \lfloor n/2 \rfloor`.
  * ``"epfml"`` (epfml/byzantine-robust-optimizer and -noniid-optimizer
    ``codes/attacks/alittle.py``; Blades ``alie_adversary.py``):
    :math:`z = \Phi^{-1}\big((n - f - s)/(n - f)\big)`, which is negative
    when :math:`n - f - s < (n - f)/2` (e.g. ``n=10, f=1`` gives -0.140) and
    flips the perturbation; needs :math:`0 < n - f - s < n - f`.

  Garfield hard-codes 1.035 "for n=20, f=8 (s=3)", which is the paper's
  :math:`\Phi^{-1}(0.85) = 1.036`.

  Args:
    num_workers: ``n``.
    num_byzantine: ``f``.
    convention: ``"paper"`` or ``"epfml"``.

  Returns:
    ``z`` as a Python float (computed in float64 by ``statistics.NormalDist``).

  Raises:
    ValueError: on an unknown convention or when the CDF argument leaves
      :math:`(0, 1)`; the message names ``n``, ``f`` and ``s``.

  Example:
    >>> from distoptax.algorithms import attacks
    >>> round(attacks.alie_z(20, 8), 4), round(attacks.alie_z(50, 24), 4)
    (1.0364, 1.7507)
    >>> round(attacks.alie_z(20, 8, convention="epfml"), 4)
    0.6745
  """
  if convention not in ALIE_CONVENTIONS:
    raise ValueError(f"alie_z convention must be one of {ALIE_CONVENTIONS}; "
                     f"got {convention!r}")
  n, f = int(num_workers), int(num_byzantine)
  if not 0 <= f < n:
    raise ValueError(f"alie_z needs 0 <= f < n; got n={n}, f={f}")
  s = math.floor(n / 2 + 1) - f
  if convention == "paper":
    num, den, formula = n - s, n, "(n - s) / n"
  else:
    num, den, formula = n - f - s, n - f, "(n - f - s) / (n - f)"
  if not 0 < num < den:
    raise ValueError(
        f"a_little_is_enough's z ({convention}) needs 0 < {formula} < 1 with "
        f"s = floor(n/2 + 1) - f; got n={n}, f={f}, s={s} "
        f"({formula} = {num}/{den}); pass z explicitly")
  return statistics.NormalDist().inv_cdf(num / den)


def a_little_is_enough(
    num_byzantine: int | None = None,
    *,
    z: float | None = None,
    byzantine_mask: Sequence[bool] | None = None,
    axis_name: str = collectives.WORKERS,
) -> optax.GradientTransformationExtraArgs:
  r"""A Little Is Enough (ALIE): the honest mean shifted by z std deviations.

  With :math:`\mu_j, \sigma_j` the coordinate-wise mean and standard
  deviation of the honest updates,

  .. math::
    (\tilde g_i)_j = \mu_j - z\, \sigma_j \quad (i \text{ Byzantine}),
    \qquad z = \Phi^{-1}\!\Big(\frac{n - s}{n}\Big),\;
    s = \Big\lfloor \frac{n}{2} + 1 \Big\rfloor - f

  (the paper's :math:`z_{\max}`, see :func:`alie_z`) unless ``z`` is given.

  Conventions (where sources disagree):

  * Sign: **minus**, as epfml ``mu - std * z_max``; ByzFL, Blades and
    Garfield use ``mean + z * std``. Pass a negative ``z`` for the plus
    form, e.g. ``z=-alie_z(n, f)``.
  * z: the paper's formula by default; epfml and Blades use
    :math:`\Phi^{-1}((n - f - s)/(n - f))`, available as
    ``z=alie_z(n, f, convention="epfml")``; ByzFL a fixed 1.5.
  * Standard deviation: population (``ddof=0``), over the **honest**
    workers only. epfml, Blades (``torch.std``) and ByzFL (``ddof=1``) use
    the unbiased estimate; with ``n - f = 1`` that is NaN where ``ddof=0``
    gives 0.
  * Knowledge: omniscient (honest statistics), as epfml, Blades and ByzFL;
    the paper also describes estimating them from the attackers' own data,
    and Garfield does that.

  Args:
    num_byzantine: ``f``, the first ``f`` workers are Byzantine.
    z: the number of standard deviations; ``None`` computes the paper's
      :math:`z_{\max}` from ``n`` and ``f`` at ``init``/trace time.
    byzantine_mask: explicit Byzantine workers, ``n`` booleans.
    axis_name: the logical worker axis.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``optax.EmptyState``.

  Raises:
    ValueError: at ``init`` when ``z`` is ``None`` and the formula is
      undefined (``f > n/2``); the message names ``n``, ``f`` and ``s``.

  References:
    Baruch, Baruch and Goldberg, "A Little Is Enough: Circumventing Defenses
    For Distributed Learning", NeurIPS 2019 (arXiv:1902.06156).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import distributed as dist
    >>> from distoptax.algorithms import attacks
    >>> tx = attacks.a_little_is_enough(1, z=1.0)
    >>> def step(g):
    ...   return tx.update(g, tx.init(g))[0]
    >>> g = jnp.array([[0.0], [1.0], [3.0]])  # honest: mean 2, std 1
    >>> jax.vmap(step, axis_name=dist.WORKERS)(g)
    Array([[1.],
           [1.],
           [3.]], dtype=float32)
  """
  fixed_z = None if z is None else float(z)

  def z_for(num_workers: int, byzantine: np.ndarray) -> float:
    if fixed_z is not None:
      return fixed_z
    return alie_z(num_workers, int(byzantine.sum()))

  def check(num_workers, byzantine):
    z_for(num_workers, byzantine)

  def craft(updates, state, ctx):
    z_value = z_for(ctx.num_workers, ctx.byzantine)
    honest = base.gather_honest(updates, ctx)
    mean = base.honest_mean(honest)
    std = base.honest_std(honest, mean)
    return jax.tree.map(lambda m, s: m - z_value * s, mean, std), state

  return base.make_attack("a_little_is_enough", num_byzantine, craft,
                          byzantine_mask=byzantine_mask, axis_name=axis_name,
                          check=check)


def mimic(
    num_byzantine: int | None = None,
    *,
    target: int | None = None,
    byzantine_mask: Sequence[bool] | None = None,
    axis_name: str = collectives.WORKERS,
) -> optax.GradientTransformationExtraArgs:
  r"""Mimic: every Byzantine worker sends a copy of one honest worker's update.

  .. math::
    \tilde g_i = g_{t} \quad (i \text{ Byzantine}),\quad t \text{ honest}

  Over-representing one honest worker biases the aggregate towards its data
  under heterogeneity, and the exact duplicates stress the tie-breaking of
  distance-based rules. The target is fixed: ``target`` if given, else the
  honest worker with the lowest index (worker ``f`` by default). ByzFL's
  ``Mimic(epsilon=0)`` and epfml's ``MimicAttacker(target_rank)`` also take
  a fixed index. The paper's heuristic, which picks during a warm-up the
  honest worker with the largest projection on a tracked principal direction
  of the honest updates (epfml ``MimicVariantAttacker``), is not
  implemented.

  Args:
    num_byzantine: ``f``, the first ``f`` workers are Byzantine.
    target: index of the honest worker to copy; default the lowest honest
      index.
    byzantine_mask: explicit Byzantine workers, ``n`` booleans.
    axis_name: the logical worker axis.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``optax.EmptyState``.

  Raises:
    ValueError: at ``init`` when ``target`` is out of range or Byzantine.

  References:
    Karimireddy, He and Jaggi, "Byzantine-Robust Learning on Heterogeneous
    Datasets via Bucketing", ICLR 2022 (arXiv:2006.09365).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from distoptax import distributed as dist
    >>> from distoptax.algorithms import attacks
    >>> tx = attacks.mimic(2)
    >>> def step(g):
    ...   return tx.update(g, tx.init(g))[0]
    >>> g = jnp.array([[0.0], [1.0], [7.0]])
    >>> jax.vmap(step, axis_name=dist.WORKERS)(g)
    Array([[7.],
           [7.],
           [7.]], dtype=float32)
  """
  if target is not None and (isinstance(target, bool)
                             or not isinstance(target, (int, np.integer))):
    raise ValueError(f"mimic target must be a worker index; got {target!r}")

  def target_for(num_workers: int, byzantine: np.ndarray) -> int:
    if target is None:
      return int(np.flatnonzero(~byzantine)[0])
    if not 0 <= target < num_workers or byzantine[target]:
      raise ValueError(
          f"mimic target must be an honest worker index in [0, n); got "
          f"target={target} with n={num_workers}, f={int(byzantine.sum())}, "
          f"Byzantine workers {np.flatnonzero(byzantine).tolist()}")
    return int(target)

  def check(num_workers, byzantine):
    target_for(num_workers, byzantine)

  def craft(updates, state, ctx):
    t = target_for(ctx.num_workers, ctx.byzantine)
    stacked = collectives.all_gather(updates, ctx.axis_name)
    return jax.tree.map(lambda s: s[t], stacked), state

  return base.make_attack("mimic", num_byzantine, craft,
                          byzantine_mask=byzantine_mask, axis_name=axis_name,
                          check=check)
