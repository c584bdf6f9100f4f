"""The pure math of local updates: FedProx's term, FedOpt's server rules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distoptax.algorithms import local

W = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([[3.0]])}
ANCHOR = {"a": jnp.array([0.0, 1.0, 0.5]), "b": jnp.array([[1.0]])}
MU = 0.3


def _sq(tree):
  return sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(tree))


def test_the_proximal_term_is_half_mu_times_the_squared_distance():
  d = jax.tree.map(lambda w, a: w - a, W, ANCHOR)
  np.testing.assert_allclose(local.proximal_term(W, ANCHOR, MU),
                             0.5 * MU * _sq(d), rtol=1e-6)
  # The square: twice the distance, four times the penalty.
  far = jax.tree.map(lambda a, x: a + 2 * x, ANCHOR, d)
  np.testing.assert_allclose(local.proximal_term(far, ANCHOR, MU),
                             4 * local.proximal_term(W, ANCHOR, MU),
                             rtol=1e-6)


def test_the_gradient_is_mu_times_the_distance_and_the_anchor_is_detached():
  grad_w, grad_anchor = jax.grad(local.proximal_term, argnums=(0, 1))(
      W, ANCHOR, MU)
  jax.tree.map(lambda g, w, a: np.testing.assert_allclose(
      g, MU * (w - a), rtol=1e-6), grad_w, W, ANCHOR)
  for leaf in jax.tree.leaves(grad_anchor):
    np.testing.assert_array_equal(leaf, 0.0)
  g = jax.tree.map(jnp.ones_like, W)
  expected = jax.tree.map(lambda a, b: a + b, g, grad_w)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6),
               local.proximal_gradient(g, W, ANCHOR, MU), expected)


def test_a_proximal_step_moves_towards_the_anchor():
  zero = jax.tree.map(jnp.zeros_like, W)
  step = local.proximal_gradient(zero, W, ANCHOR, MU)
  moved = jax.tree.map(lambda w, s: w - 0.5 * s, W, step)
  dist = lambda t: _sq(jax.tree.map(lambda x, a: x - a, t, ANCHOR))
  assert dist(moved) < dist(W)


def test_mu_may_be_traced():
  out = jax.jit(lambda mu: local.proximal_term(W, ANCHOR, mu))(MU)
  np.testing.assert_allclose(out, local.proximal_term(W, ANCHOR, MU),
                             rtol=1e-6)


@pytest.mark.parametrize("bad,error", [(-1e-3, ValueError),
                                       (float("inf"), ValueError),
                                       (True, TypeError),
                                       (jnp.ones(2), TypeError)])
def test_bad_mu(bad, error):
  with pytest.raises(error, match="mu"):
    local.proximal_term(W, ANCHOR, bad)


@pytest.mark.parametrize("kind", local.FEDOPT_KINDS)
def test_fedopt_server_rule_by_hand(kind):
  eta, b1, b2, tau, v0 = 0.05, 0.8, 0.9, 1e-2, 0.04
  tx = local.fedopt_server(eta, b1, b2, tau, kind=kind,
                           initial_accumulator=v0)
  rng = np.random.default_rng(0)
  ps = rng.normal(size=(4, 5)).astype(np.float32)
  state = tx.init(jnp.zeros(5))
  m, v = np.zeros(5), np.full(5, v0)
  for p in ps:
    out, state = tx.update(jnp.asarray(p), state)
    m = b1 * m + (1 - b1) * p
    if kind == "adagrad":
      v = v + p**2
    elif kind == "adam":
      v = b2 * v + (1 - b2) * p**2
    else:
      v = v - (1 - b2) * p**2 * np.sign(v - p**2)
    np.testing.assert_allclose(out, -eta * m / (np.sqrt(v) + tau),
                               rtol=1e-5)
  np.testing.assert_allclose(state.v, v, rtol=1e-5)


def test_fedopt_server_schedules_under_inject_hyperparams():
  tx = optax.inject_hyperparams(local.fedopt_server,
                                static_args=("kind",))(learning_rate=0.1)
  plain = local.fedopt_server(0.1)
  p = jnp.array([1.0, -3.0])
  np.testing.assert_allclose(tx.update(p, tx.init(p))[0],
                             plain.update(p, plain.init(p))[0], rtol=1e-6)
