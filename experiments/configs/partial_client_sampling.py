r"""Client sampling: 4 of 16 workers per step on MNIST-5k (FedAvg-style).

Synchronous SGD whose every step aggregates the gradients of 4 workers
drawn uniformly without replacement from 16 (McMahan et al.,
arXiv:1602.05629), averaged over the participants
(``participation_normalizer='participants'``: an unbiased estimate of the
full mean). Only the participants compute and communicate, so the clock
charges them alone; ``participation`` is 0.25 on every line.

  python -m distoptax.experiments.train --config=partial_client_sampling \
      --workdir=runs/partial_client_sampling

Weighting by the participants' shard sizes instead:
``--config.participation_normalizer=examples``.
"""

from distoptax.experiments import config


def get_config():
  return config.config_dict(
      num_workers=16,
      participation="client_sampling",
      participation_k=4,
      steps=1000,
      log_every=50,
      checkpoint_every=250,
  )
