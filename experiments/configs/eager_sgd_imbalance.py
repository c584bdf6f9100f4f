r"""eager-SGD (majority all-reduce) under injected load imbalance.

Li, Ben-Nun, Di Girolamo, Alistarh & Hoefler (arXiv:1908.04207): 8 workers
on MNIST-5k, two of them 3x slower (``imbalance``). Each round starts when
a randomly drawn initiator (shared seed) has its gradient; the workers not
ready contribute zero and send their gradient, computed on an older model,
in the first round after they finish; every 32nd round is fully
synchronous (the reference's limiter). The ready workers and the round end
times come from ``distributed.eager_schedule`` on the run's clock, which
also gives the simulated seconds. Lines report ``ready_fraction``, the
staleness of the applied gradients (mean, max, histogram of rounds late)
and ``forced_rounds``.

  python -m distoptax.experiments.train --config=eager_sgd_imbalance \
      --workdir=runs/eager_sgd_imbalance

The synchronous baseline on the same clock: ``--config.eager_mode=sync``;
solo (the first worker to finish triggers): ``--config.eager_mode=solo``.
"""

from distoptax.experiments import config


def get_config():
  return config.config_dict(
      algorithm="eager_sgd",
      eager_mode="majority",
      eager_limiter=32,
      imbalance=(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 3.0),
      steps=1000,
      log_every=50,
      checkpoint_every=250,
  )
