r"""Local SGD on MNIST-5k: 8 workers, a sync of the models every 8 steps.

Each worker runs plain SGD on its own copy of the MLP; every 8 steps the
pseudo-gradients (global model minus local model) are averaged and the
global model steps by them at rate 1 (the average model). Metrics add the
current period and the number of syncs; wire bytes grow on sync steps only.

  python -m distoptax.experiments.train --config=local_sgd \
      --workdir=runs/local_sgd
"""

from distoptax.experiments import config


def get_config():
  return config.config_dict(
      algorithm="local_sgd",
      period=8,
      momentum=0.0,
      steps=800,
      log_every=40,
      checkpoint_every=200,
  )
