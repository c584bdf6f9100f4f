r"""FedProx on Dirichlet(0.3)-skewed MNIST-5k: FedAvg plus mu/2 ||w - x||^2.

The FedAvg run of ``local_fedavg_dirichlet`` with the proximal term of Li
et al. (arXiv:1812.06127) against the model of the last sync (detached,
squared): clients drift less from the server model under label skew.

  python -m distoptax.experiments.train --config=local_fedprox_dirichlet \
      --workdir=runs/fedprox
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
      proximal_mu=0.1,
      momentum=0.0,
      learning_rate=0.05,
      steps=1000,
      log_every=50,
      checkpoint_every=250,
  )
