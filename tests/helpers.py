"""Shared test fixtures: a small regression problem, its batches, HLO bytes."""

import re

import jax
import jax.numpy as jnp
import numpy as np


def mlp_params(key, d_in=5, hidden=7):
  k1, k2 = jax.random.split(key)
  return {
      "w1": jax.random.normal(k1, (d_in, hidden)) / np.sqrt(d_in),
      "b1": jnp.zeros(hidden),
      "w2": jax.random.normal(k2, (hidden,)) / np.sqrt(hidden),
  }


def mlp_loss(params, batch):
  x, y = batch
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return 0.5 * jnp.mean((h @ params["w2"] - y) ** 2)


def worker_batches(seed, num_workers, batch_size, d_in=5):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_workers, batch_size, d_in)).astype(np.float32)
  y = rng.normal(size=(num_workers, batch_size)).astype(np.float32)
  return x, y


def assert_replicated(tree):
  """Every worker (leading axis) holds bit-identical values."""
  for leaf in jax.tree.leaves(tree):
    arr = np.asarray(leaf)
    np.testing.assert_array_equal(arr, np.broadcast_to(arr[:1], arr.shape))


_TENSOR = re.compile(r"tensor<((?:\d+x)*)([a-z]+\d+)>")
_BITS = {"f32": 32, "f16": 16, "bf16": 16, "i32": 32, "ui32": 32, "ui8": 8,
         "i8": 8, "f64": 64}


def collective_operand_bytes(hlo_text, op):
  """Bytes of the operands of every `op` in a StableHLO module."""
  lines = hlo_text.splitlines()
  total = 0
  for i, line in enumerate(lines):
    if f'"stablehlo.{op}"' not in line:
      continue
    if op == "all_reduce":  # Its signature follows the reduction body.
      j = next(j for j in range(i, len(lines)) if lines[j].lstrip()
               .startswith("}) :"))
      signature = lines[j]
    else:
      signature = line
    operands = signature.split(") -> ")[0].split(" : (")[-1]
    for dims, dtype in _TENSOR.findall(operands):
      size = int(np.prod([int(d) for d in dims.split("x") if d]))
      total += size * _BITS[dtype] // 8
  return total
