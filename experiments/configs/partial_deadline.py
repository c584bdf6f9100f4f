r"""Synchronous SGD with a deadline: stragglers past it sit the step out.

8 workers on MNIST-5k; each step's compute is 10 ms plus an exponential
straggler delay of mean 5 ms. A worker that has not finished 20 ms after
the step's start contributes nothing to that step (Chen et al.,
arXiv:1604.00981, with a time cut-off instead of a count); the step's
all-reduce starts at the deadline (or when the last worker is done, if all
are on time). Who meets the deadline comes from the declared system model
(``distributed.deadline_schedule`` on the run's clock, seeded by the run),
so a resumed run drops the same workers. ``participation`` is the fraction
of the workers on time.

  python -m distoptax.experiments.train --config=partial_deadline \
      --workdir=runs/partial_deadline

Without the deadline (every step waits for the slowest worker):
``--config=partial_deadline --config.participation=everyone
--config.deadline_seconds=0``.
"""

from distoptax.experiments import config


def get_config():
  return config.config_dict(
      participation="deadline",
      deadline_seconds=0.02,
      straggler="exponential",
      straggler_params={"mean": 0.005},
      steps=1000,
      log_every=50,
      checkpoint_every=250,
  )
