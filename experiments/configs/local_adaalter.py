r"""Local AdaAlter on MNIST-5k: AdaGrad-preconditioned local SGD, period 4.

Xie et al. (arXiv:1911.09030): between syncs each worker's denominator is
frozen and its accumulator grows; every 4 steps parameters and
accumulators are averaged and the averaged accumulator becomes the new
denominator (eps as in the authors' code).

  python -m distoptax.experiments.train --config=local_adaalter \
      --workdir=runs/adaalter
"""

from distoptax.experiments import config


def get_config():
  return config.config_dict(
      algorithm="local_adaalter",
      period=4,
      momentum=0.0,
      learning_rate=0.1,
      steps=800,
      log_every=40,
      checkpoint_every=200,
  )
