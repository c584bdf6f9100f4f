"""Bytes handed to collectives, recorded in optimizer state, round by round.

Every communicating transform keeps a :class:`CommStats` in its state
(per worker: coded lengths and participation differ across workers). It
holds

* this step's bytes per collective kind (``all_reduce_bytes``,
  ``all_gather_bytes``) and coded bytes, as ``int32`` scalars;
* the cumulative totals, exact 64-bit counters held in two ``uint32`` words
  (``jax_enable_x64`` is off by default, and an ``int32`` total would
  overflow after 2 GiB);
* a :class:`RoundRecord` of fixed capacity: the rounds the transform ran in
  its last update, in order, each as (kind, bytes, whether this worker took
  part). :func:`clock_rounds` turns a runtime's records into the
  :class:`~distoptax.distributed.clock.Round` list that the clock charges.

Byte counts are usually static (from the shapes and dtypes of the arrays
handed to the collective), but may be computed inside ``jit`` (a sparse
message whose length depends on the data). A static count outside
``[0, 2**31)`` raises a ``ValueError`` at trace time. A traced count cannot
raise there, so an invalid one (negative, or ``>= 2**31`` in a wider integer
type) marks the record instead: the round's bytes become ``-1``, the step's
byte fields ``-1`` and both totals the sentinel ``2**64 - 1`` for good, and
the host-side readers (:func:`total_bytes`, :func:`total_coded_bytes`,
:func:`clock_rounds`) raise a ``ValueError`` that says so.

The rounds are recorded by :class:`distoptax.distributed.communication.Rounds`;
:func:`record` is the one-call form for a step of at most one all-reduce and
one all-gather.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from distoptax.distributed import clock
from distoptax.distributed import topologies

KINDS = topologies.COLLECTIVES
"""Collective kinds; a :class:`RoundRecord` stores the index into this."""

NO_ROUND = -1
"""The kind code of an unused slot of a :class:`RoundRecord`."""

_INVALID_WORD = np.uint32(0xFFFFFFFF)
_MAX_BYTES = 2**31


class RoundRecord(NamedTuple):
  """The communication rounds of one transform's last update, in order.

  The capacity ``C`` (the most rounds one update can run) is fixed when the
  state is created (:func:`init_comm_stats`). Slots are filled in the order
  the rounds ran; slots left over (fewer rounds, or a round under a
  condition that skipped it) hold ``kind == NO_ROUND`` and 0 bytes.

  Attributes:
    kind: ``int32[C]``, the index of the round's collective in
      :data:`KINDS`, or :data:`NO_ROUND`.
    bytes: ``int32[C]``, the bytes this worker handed to the round's
      collective (what the algorithm passed to it, in its own dtype); ``-1``
      marks an invalid traced count.
    participated: ``bool[C]``, whether this worker took part (a non-zero
      weight or mask). The participants of a round are the workers whose
      flag is set; :func:`clock_rounds` reads them off a runtime's state.
  """

  kind: jax.Array
  bytes: jax.Array
  participated: jax.Array


class CommStats(NamedTuple):
  """Per-worker communication of one transform.

  Attributes:
    all_reduce_bytes: bytes handed to all-reduce (``psum``) this step.
    all_gather_bytes: bytes handed to all-gather this step.
    total_bytes: cumulative bytes of every kind since ``init``, as
      ``uint32[2]`` words ``(low, high)``; read it with :func:`total_bytes`.
    coded_bytes: this step's message length under the compressor's entropy
      or run-length code, ``ceil(bits / 8)`` (data dependent); equal to the
      wire bytes when the compressor defines no code.
    total_coded_bytes: cumulative ``coded_bytes`` as ``uint32[2]``; read it
      with :func:`total_coded_bytes`.
    rounds: the :class:`RoundRecord` of this step's rounds (reduce-scatter
      and broadcast rounds are counted there and in the totals), or ``()``
      for stats built without one.
  """

  all_reduce_bytes: jax.Array
  all_gather_bytes: jax.Array
  total_bytes: jax.Array
  coded_bytes: jax.Array
  total_coded_bytes: jax.Array
  rounds: RoundRecord | tuple[()] = ()


def empty_rounds(capacity: int) -> RoundRecord:
  """A :class:`RoundRecord` with ``capacity`` unused slots."""
  if (not isinstance(capacity, int) or isinstance(capacity, bool)
      or capacity < 0):
    raise ValueError(f"capacity must be an int >= 0; got {capacity!r}")
  return RoundRecord(jnp.full((capacity,), NO_ROUND, jnp.int32),
                     jnp.zeros((capacity,), jnp.int32),
                     jnp.zeros((capacity,), jnp.bool_))


def init_comm_stats(capacity: int = 2) -> CommStats:
  """Zero counters and an empty record of ``capacity`` rounds per step.

  Args:
    capacity: the most rounds one update of the transform runs (over all
      branches of a condition: the largest branch).

  Returns:
    A :class:`CommStats`.
  """
  zero = jnp.zeros((), jnp.int32)
  words = jnp.zeros((2,), jnp.uint32)
  return CommStats(zero, zero, words, zero, words, empty_rounds(capacity))


def _static_int(value: Any) -> int | None:
  """The value of a concrete integer scalar array; ``None`` if traced."""
  try:
    return int(value)
  except (jax.errors.ConcretizationTypeError,
          jax.errors.TracerIntegerConversionError):
    return None


def check_byte_count(name: str, value: Any) -> tuple[Any, Any]:
  """Validates a byte count; static ones now, traced ones as data.

  Args:
    name: what the count is, for the error message.
    value: a Python or NumPy integer, or an integer scalar array (concrete
      or traced inside ``jit``).

  Returns:
    ``(count, valid)``: a static count as a Python int with ``True``; a
    traced one as an ``int32`` scalar (0 where invalid) with a traced
    ``bool`` scalar saying whether it lies in ``[0, 2**31)``.

  Raises:
    TypeError: for a bool, a float or a non-integer array.
    ValueError: for a static count outside ``[0, 2**31)`` or an array that
      is not a scalar.
  """
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be an integer byte count; got {value!r}")
  if isinstance(value, (int, np.integer)):
    if not 0 <= int(value) < _MAX_BYTES:
      raise ValueError(f"{name} must lie in [0, 2**31); got {int(value)}")
    return int(value), True
  if not hasattr(value, "dtype") or not hasattr(value, "shape"):
    raise TypeError(f"{name} must be an integer byte count; got {value!r}")
  if not jnp.issubdtype(value.dtype, jnp.integer):
    raise TypeError(
        f"{name} must have an integer dtype; got {value.dtype} ({value!r})")
  if tuple(value.shape) != ():
    raise ValueError(f"{name} must be a scalar; got shape {value.shape}")
  static = _static_int(value)
  if static is not None:
    return check_byte_count(name, static)
  valid = value >= 0
  if jnp.iinfo(value.dtype).max >= _MAX_BYTES:
    valid = valid & (value < jnp.asarray(_MAX_BYTES, value.dtype))
  return jnp.where(valid, value, 0).astype(jnp.int32), valid


def add_bytes(words: jax.Array, amount: Any) -> jax.Array:
  """Adds a count in ``[0, 2**31)`` to a ``uint32[2]`` (low, high) total."""
  low, high = words[0], words[1]
  new_low = low + jnp.asarray(amount).astype(jnp.uint32)
  carry = (new_low < low).astype(jnp.uint32)
  return jnp.stack([new_low, high + carry])


def tree_bytes(tree) -> int:
  """Bytes of all arrays in ``tree`` (static: from shapes and dtypes)."""
  return sum(int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
             for leaf in jax.tree.leaves(tree))


class Tally(NamedTuple):
  """One update's rounds while they are being recorded.

  Every field is an array, so that a tally can pass through ``lax.cond``.

  Attributes:
    rounds: the :class:`RoundRecord` filled so far.
    coded: this step's coded bytes so far (``int32``).
    total: the cumulative wire bytes, ``uint32[2]``.
    total_coded: the cumulative coded bytes, ``uint32[2]``.
    valid: ``bool`` scalar: every traced count so far was valid and no sum
      wrapped.
  """

  rounds: RoundRecord
  coded: jax.Array
  total: jax.Array
  total_coded: jax.Array
  valid: jax.Array


def start_tally(stats: CommStats, capacity: int | None = None) -> Tally:
  """An empty tally on top of ``stats``' totals.

  Args:
    stats: the previous step's stats.
    capacity: the record's capacity; ``None`` takes that of
      ``stats.rounds``.
  """
  if capacity is None:
    if not isinstance(stats.rounds, RoundRecord):
      raise TypeError(
          "these CommStats have no round record; create them with "
          "comm_stats.init_comm_stats(capacity=...)")
    capacity = stats.rounds.kind.shape[-1]
  return Tally(empty_rounds(capacity), jnp.zeros((), jnp.int32),
               stats.total_bytes, stats.total_coded_bytes,
               jnp.asarray(True))


def tally_round(tally: Tally, slot: int, kind: str, count: Any, count_ok: Any,
                coded: Any, coded_ok: Any, participated: Any) -> Tally:
  """Writes one round into ``slot`` and adds it to the totals.

  Args:
    tally: the tally so far.
    slot: the static slot index (the number of rounds recorded before).
    kind: one of :data:`KINDS`.
    count, count_ok: the wire bytes and validity from
      :func:`check_byte_count`.
    coded, coded_ok: the same for the round's coded bytes.
    participated: ``True`` or this worker's traced participation flag.

  Returns:
    The new tally.

  Raises:
    ValueError: if ``slot`` is beyond the record's capacity.
  """
  capacity = tally.rounds.kind.shape[-1]
  if slot >= capacity:
    raise ValueError(
        f"a transform ran more communication rounds in one update than its "
        f"record holds (capacity={capacity}); create its stats with "
        f"init_comm_stats(capacity={slot + 1}) or more")
  valid = tally.valid
  for ok in (count_ok, coded_ok):
    if ok is not True:
      valid = valid & ok
  step_coded = tally.coded + coded
  valid = valid & (step_coded >= 0)   # Each term < 2**31: a wrap is < 0.
  shown = count if count_ok is True else jnp.where(count_ok, count, -1)
  rounds = RoundRecord(
      tally.rounds.kind.at[slot].set(KINDS.index(kind)),
      tally.rounds.bytes.at[slot].set(shown),
      tally.rounds.participated.at[slot].set(participated))
  return Tally(rounds, step_coded, add_bytes(tally.total, count),
               add_bytes(tally.total_coded, coded), valid)


def finish_tally(tally: Tally, keep_record: bool = True) -> CommStats:
  """The new :class:`CommStats` from a finished tally.

  The step's per-kind fields are sums over the record; if a traced count
  was invalid or a sum reached ``2**31`` they are ``-1`` and both totals
  become the sentinel ``2**64 - 1`` (see the module docstring).
  """
  rec, valid = tally.rounds, tally.valid
  sums = []
  for code in (KINDS.index("all_reduce"), KINDS.index("all_gather")):
    total = jnp.zeros((), jnp.int32)
    for slot in range(rec.kind.shape[-1]):
      total = total + jnp.where(rec.kind[slot] == code,
                                jnp.maximum(rec.bytes[slot], 0), 0)
      valid = valid & (total >= 0)
    sums.append(total)
  ar, ag, coded = (jnp.where(valid, x, -1) for x in (*sums, tally.coded))
  invalid = jnp.full((2,), _INVALID_WORD, jnp.uint32)
  return CommStats(ar, ag, jnp.where(valid, tally.total, invalid), coded,
                   jnp.where(valid, tally.total_coded, invalid),
                   rec if keep_record else ())


def record(stats: CommStats, *, all_reduce_bytes: Any = 0,
           all_gather_bytes: Any = 0,
           coded_bytes: Any = None) -> CommStats:
  """Returns ``stats`` with this step's byte counts and the totals updated.

  The one-call form for a step of at most one all-reduce and one
  all-gather, every worker taking part; a multi-round protocol uses
  :class:`distoptax.distributed.communication.Rounds`. Each count may be a
  static int or an integer scalar traced inside ``jit`` (see the module
  docstring for how an invalid traced count is reported).

  Args:
    stats: the previous stats.
    all_reduce_bytes: bytes handed to the all-reduce this step.
    all_gather_bytes: bytes handed to the all-gather this step.
    coded_bytes: this step's coded bytes; ``None`` means the wire bytes.

  Returns:
    The new :class:`CommStats`. Its record (if ``stats`` has one) lists the
    all-reduce, then the all-gather, leaving out a static count of 0.

  Raises:
    ValueError: for a static count outside ``[0, 2**31)``, a static step
      total of ``2**31`` bytes or more, or more rounds than the record
      holds.
    TypeError: for a count that is not an integer.
  """
  checked = [(kind, *check_byte_count(f"{kind}_bytes", value))
             for kind, value in (("all_reduce", all_reduce_bytes),
                                 ("all_gather", all_gather_bytes))]
  static = [count for _, count, ok in checked if ok is True]
  if len(static) == 2 and not sum(static) < _MAX_BYTES:
    raise ValueError(
        f"one step's wire bytes must lie in [0, 2**31); got {sum(static)}")
  sent = [(kind, count, ok) for kind, count, ok in checked
          if ok is not True or count != 0]
  if coded_bytes is not None:
    coded_total, coded_ok = check_byte_count("coded_bytes", coded_bytes)
  keep = isinstance(stats.rounds, RoundRecord)
  tally = start_tally(stats, None if keep else 2)
  for slot, (kind, count, ok) in enumerate(sent):
    # The step's coded bytes go with its first round.
    if coded_bytes is None:
      coded, c_ok = count, ok
    else:
      coded, c_ok = (coded_total, coded_ok) if slot == 0 else (0, True)
    tally = tally_round(tally, slot, kind, count, ok, coded, c_ok, True)
  if not sent and coded_bytes is not None:
    tally = tally._replace(
        coded=jnp.asarray(coded_total, jnp.int32),
        total_coded=add_bytes(tally.total_coded, coded_total),
        valid=tally.valid & coded_ok if coded_ok is not True else tally.valid)
  return finish_tally(tally, keep_record=keep)


def find_comm_stats(opt_state) -> list[CommStats]:
  """All :class:`CommStats` nested anywhere in an optimizer state."""
  return [node for node in jax.tree.leaves(
      opt_state, is_leaf=lambda n: isinstance(n, CommStats))
          if isinstance(node, CommStats)]


def _check_words(words: np.ndarray, what: str) -> None:
  if np.any((words[..., 0] == _INVALID_WORD)
            & (words[..., 1] == _INVALID_WORD)):
    raise ValueError(
        f"{what}: a byte count computed inside jit was invalid (negative, or "
        f"2**31 or more) at some step, so the total is unknown; the round "
        f"records of that step hold -1")


def _words_to_int(words) -> int:
  words = np.asarray(words, dtype=np.uint64)
  _check_words(words, "total_bytes")
  return int(words[..., 0].reshape(-1)[0]) + (
      int(words[..., 1].reshape(-1)[0]) << 32)


def total_bytes(stats: CommStats) -> int:
  """The exact cumulative wire byte count as a Python int (host side).

  Raises:
    ValueError: if an invalid traced byte count was recorded.
  """
  return _words_to_int(stats.total_bytes)


def total_coded_bytes(stats: CommStats) -> float:
  """Cumulative coded bytes per worker, averaged over workers (host side).

  Wire bytes are the same on every worker (static shapes); coded lengths
  depend on each worker's data, so the stats of a runtime's state (with a
  leading worker axis) are averaged over the workers.

  Raises:
    ValueError: if an invalid traced byte count was recorded.
  """
  words = np.asarray(stats.total_coded_bytes, dtype=np.uint64).reshape(-1, 2)
  _check_words(words, "total_coded_bytes")
  return float(np.mean(words[:, 0].astype(np.float64)
                       + words[:, 1].astype(np.float64) * 2.0**32))


def _find_records(tree: Any) -> list[RoundRecord]:
  is_node = lambda n: isinstance(n, (CommStats, RoundRecord))
  records = []
  for node in jax.tree.leaves(tree, is_leaf=is_node):
    if isinstance(node, CommStats):
      if not isinstance(node.rounds, RoundRecord):
        raise ValueError(
            "clock_rounds: a CommStats has no round record (it was built "
            "without init_comm_stats); its transform must record rounds")
      records.append(node.rounds)
    elif isinstance(node, RoundRecord):
      records.append(node)
  return records


def clock_rounds(tree: Any) -> list[clock.Round]:
  """The clock's rounds of the last step, from a runtime's state (host side).

  Args:
    tree: anything holding :class:`CommStats` or :class:`RoundRecord`
      nodes: a runtime's ``TrainState`` or ``opt_state``, a list of stats,
      or metrics that carry records. Each record's arrays are ``[C]`` (one
      worker's view) or ``[num_workers, C]`` (a runtime's per-worker
      state). Transforms are taken in the order they appear in ``tree``
      (for an ``optax.chain``, the chain's order), and each one's rounds in
      the order they ran.

  Returns:
    One :class:`~distoptax.distributed.clock.Round` per round that ran:
    its kind, the largest byte count among its participants (equal on all
    of them for static message shapes), and its participants (``None`` when
    every worker took part, else a ``[num_workers]`` boolean mask). Skipped
    rounds and rounds in which no worker took part are left out: they move
    no bytes and wait for no one.

  Raises:
    ValueError: on a record whose workers disagree on a slot's kind, or
      that holds an invalid traced byte count.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from distoptax import algorithms as alg, distributed as dist
    >>> tx = dist.aggregate(alg.aggregators.mean())
    >>> def step(g):
    ...   return tx.update(g, tx.init(g))[1]
    >>> state = jax.vmap(step, axis_name=dist.WORKERS)(jnp.ones((4, 3)))
    >>> dist.clock_rounds(state)
    [Round(kind='all_reduce', bytes=12, participants=None, tier=None)]
  """
  rounds = []
  for rec in _find_records(tree):
    kind = np.asarray(rec.kind)
    count = np.asarray(rec.bytes)
    part = np.asarray(rec.participated).astype(bool)
    per_worker = kind.ndim == 2
    if not per_worker:
      kind, count, part = kind[None], count[None], part[None]
    if kind.ndim != 2:
      raise ValueError(
          f"clock_rounds: a round record's arrays must be [C] or "
          f"[num_workers, C]; got shape {np.asarray(rec.kind).shape}")
    for slot in range(kind.shape[1]):
      codes = np.unique(kind[:, slot])
      if len(codes) != 1:
        raise ValueError(
            f"clock_rounds: workers disagree on round {slot}'s kind: codes "
            f"{codes.tolist()} (replicated conditions must decide which "
            f"rounds run)")
      code = int(codes[0])
      who = part[:, slot]
      if code == NO_ROUND or not who.any():
        continue
      sent = count[who, slot]
      if np.any(sent < 0):
        raise ValueError(
            f"clock_rounds: round {slot} ({KINDS[code]}) holds an invalid "
            f"byte count computed inside jit: {sent.tolist()}")
      participants = None if who.all() or not per_worker else who
      rounds.append(clock.Round(KINDS[code], int(sent.max()), participants))
  return rounds
