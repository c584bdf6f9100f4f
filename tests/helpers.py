"""Shared test fixtures: a small regression problem, its batches, HLO bytes.

Also ``check_compressor_contract``, the contract every compressor meets.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distoptax import algorithms as alg
from distoptax import distributed as dist
from distoptax.distributed import comm_stats


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
  """Every worker holds bit-identical values.

  Per-worker leaves (leading worker axis) agree row by row; leaves declared
  replicated (held once, once per device on a mesh) agree on every device
  that holds a copy.
  """
  mask = jax.tree.leaves(dist.replication_mask(tree))
  for leaf, replicated in zip(jax.tree.leaves(tree), mask, strict=True):
    if replicated:
      copies = [np.asarray(s.data) for s in leaf.addressable_shards]
      for copy in copies[1:]:
        np.testing.assert_array_equal(copy, copies[0])
    else:
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


def mesh_step_bytes(tx, field):
  """One ``data_parallel`` step of :func:`mlp_loss` with ``tx`` on 8 devices.

  Args:
    tx: the optimizer (with a ``dist.aggregate`` in it).
    field: the ``CommStats`` field to read, e.g. ``"all_gather_bytes"``.

  Returns:
    ``(params, hlo_text, recorded)``: the initial parameters, the lowered
    program and worker 0's ``field`` after the step.
  """
  step = dist.data_parallel(mlp_loss, tx)
  rt = dist.on_mesh(step, jax.make_mesh((8,), (dist.WORKERS,)), 8)
  params = mlp_params(jax.random.key(0))
  state = rt.init(params)
  batch = worker_batches(0, 8, 4)
  hlo = rt.lower(state, batch).as_text()
  state, _ = rt.step(state, batch)
  (stats,) = dist.find_comm_stats(state.opt_state)
  return params, hlo, int(np.asarray(getattr(stats, field))[0])


def simulate_matches_mesh(step, num_workers, num_steps, atol=1e-6):
  """Runs ``step`` under ``simulate`` and ``on_mesh`` (8 devices) side by side.

  Both start from :func:`mlp_params` and take ``num_steps`` steps on the
  same :func:`worker_batches`; their parameters must agree to ``atol``.

  Args:
    step: a ``WorkerStep`` (e.g. ``dist.data_parallel(mlp_loss, tx)``).
    num_workers: workers (a multiple of 8).
    num_steps: steps of each runtime.
    atol: the tolerance on the parameters.

  Returns:
    ``(simulate_state, mesh_state, hlo_text)``: the final states and the
    mesh program's lowered text.
  """
  sim = dist.simulate(step, num_workers)
  mesh = dist.on_mesh(step, jax.make_mesh((8,), (dist.WORKERS,)),
                      num_workers)
  params = mlp_params(jax.random.key(0))
  batch = worker_batches(0, num_workers, 4)
  s1, s2 = sim.init(params), mesh.init(params)
  hlo = mesh.lower(s2, batch).as_text()
  for _ in range(num_steps):
    s1, _ = sim.step(s1, batch)
    s2, _ = mesh.step(s2, batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=atol),
               s1.params, s2.params)
  return s1, s2, hlo


_CONTRACT_NUM_WORKERS = 4  # Simulated workers in check_compressor_contract.


def _contract_tree(rng):
  return {"w": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(7,)), jnp.bfloat16),
          "s": jnp.asarray(rng.normal(), jnp.float32)}


def check_compressor_contract(compressor, wire_bytes):
  """Jit once, static message layout, measured bytes, and dist.aggregate.

  Args:
    compressor: the compressor under test.
    wire_bytes: ``wire_bytes(tree) -> int``, the documented message bytes.
  """
  rng = np.random.default_rng(0)
  traces = []

  def encode(key, tree):
    traces.append(None)
    return compressor.encode(key, tree)

  jitted = jax.jit(encode)
  decode = jax.jit(compressor.decode)
  inputs = [_contract_tree(rng), jax.tree.map(jnp.zeros_like,
                                              _contract_tree(rng)),
            jax.tree.map(lambda l: jnp.round(l), _contract_tree(rng))]
  layouts = []
  for i, tree in enumerate(inputs):
    message = jitted(jax.random.key(i), tree)
    layouts.append([(l.shape, l.dtype) for l in jax.tree.leaves(message)])
    assert comm_stats.tree_bytes(message) == wire_bytes(tree)
    out = decode(message)
    assert jax.tree.structure(out) == jax.tree.structure(tree)
    for o, t in zip(jax.tree.leaves(out), jax.tree.leaves(tree)):
      assert o.shape == t.shape and o.dtype == t.dtype
    if compressor.coded_bits is not None:
      bits = compressor.coded_bits(message)
      assert bits.dtype == jnp.int32 and bits.shape == ()
  assert len(traces) == 1 and jitted._cache_size() == 1
  assert all(layout == layouts[0] for layout in layouts)

  # Under dist.aggregate, 4 simulated workers, with error feedback.
  params = mlp_params(jax.random.key(0))
  paths = [compressor]
  if compressor.summable:
    paths.append(compressor._replace(summable=False))
  finals = []
  for c in paths:
    tx = optax.chain(dist.aggregate(alg.aggregators.mean(), compressor=c,
                                    error_feedback=True), optax.sgd(0.1))
    runtime = dist.simulate(dist.data_parallel(mlp_loss, tx),
                            _CONTRACT_NUM_WORKERS)
    state = runtime.init(params)
    for t in range(2):
      state, metrics = runtime.step(
          state, worker_batches(t, _CONTRACT_NUM_WORKERS, 6))
    assert_replicated(state.params)
    assert np.all(np.isfinite(np.asarray(metrics["loss"])))
    (stats,) = dist.find_comm_stats(state.opt_state)
    sent = comm_stats.tree_bytes(jax.eval_shape(
        compressor.encode, jax.random.key(0), params))
    assert sent == wire_bytes(params)
    if c.summable:
      np.testing.assert_array_equal(stats.all_reduce_bytes, sent)
      np.testing.assert_array_equal(stats.all_gather_bytes, 0)
    else:
      np.testing.assert_array_equal(stats.all_gather_bytes, sent)
      np.testing.assert_array_equal(stats.all_reduce_bytes, 0)
    assert dist.total_bytes(jax.tree.map(lambda a: a[0], stats)) == 2 * sent
    if compressor.coded_bits is None:
      np.testing.assert_array_equal(stats.coded_bytes, sent)
    finals.append(state.params)
  if len(finals) == 2:   # psum path == all-gather path
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-5, atol=1e-6), *finals)


_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}|"
                       r"(?:true|false)_computation=%?([\w.\-]+)")
_CALLEE = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)")


def hlo_computations(hlo_text):
  """``({name: body}, entry_name)`` of a compiled HLO module's text."""
  comps, name, entry = {}, None, None
  for line in hlo_text.splitlines():
    header = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header:
      name = header.group(2)
      entry = name if header.group(1) else entry
      comps[name] = []
    elif name is not None:
      comps[name].append(line)
  return {k: "\n".join(v) for k, v in comps.items()}, entry


def _reachable(comps, start, through_branches):
  seen, todo = set(), [start]
  while todo:
    name = todo.pop()
    if name in seen or name not in comps:
      continue
    seen.add(name)
    todo += _CALLEE.findall(comps[name])
    if through_branches:
      for group, single in _BRANCHES.findall(comps[name]):
        todo += [b.strip().lstrip("%") for b in group.split(",") if b]
        todo += [single] if single else []
  return seen


def collective_reach(hlo_text, collective):
  """Where ``collective`` (e.g. ``"all-reduce("``) runs in a compiled module.

  Returns:
    ``(always, anywhere)``: whether it is reachable from the entry without
    entering a conditional's branch, and whether it is reachable at all.
  """
  comps, entry = hlo_computations(hlo_text)
  always = _reachable(comps, entry, through_branches=False)
  anywhere = _reachable(comps, entry, through_branches=True)
  return (any(collective in comps[n] for n in always),
          any(collective in comps[n] for n in anywhere))


# One valid construction per registered name (a new entry needs a row).
COMPRESSOR_EXAMPLES = {
    "bfloat16": {},
    "float16": {},
    "global_top_k": {"fraction": 0.1},
    "identity": {},
    "natural": {},
    "qsgd": {"num_levels": 4, "bucket_size": 16},
    "scaled_sign": {},
    "sign": {},
    "terngrad": {},
    "zipml": {"num_bits": 4},
    "random_k": {"fraction": 0.25},
    "three_lc": {"sparsity_multiplier": 1.5},
    "threshold": {"tau": 0.5},
    "top_k": {"k": 3},
}
