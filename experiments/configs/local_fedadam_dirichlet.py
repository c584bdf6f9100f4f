r"""FedAdam on Dirichlet(0.3)-skewed MNIST-5k (Reddi et al., FedOpt).

Clients run plain SGD for 10 steps from the server model (state reset each
round); the server treats the averaged pseudo-gradient as a gradient for
Adam with b1 = 0.9, b2 = 0.99 and adaptivity tau = 1e-3 (arXiv:2003.00295).

  python -m distoptax.experiments.train --config=local_fedadam_dirichlet \
      --workdir=runs/fedadam
"""

from distoptax.experiments import config


def get_config():
  return config.config_dict(
      partition="dirichlet",
      dirichlet_alpha=0.3,
      num_workers=16,
      batch_size=16,
      algorithm="local_sgd",
      period=10,
      state_policy="reset",
      momentum=0.0,
      learning_rate=0.05,
      outer_optimizer="adam",
      outer_learning_rate=0.01,
      outer_momentum=0.9,
      outer_b2=0.99,
      outer_eps=1e-3,
      steps=1000,
      log_every=50,
      checkpoint_every=250,
  )
