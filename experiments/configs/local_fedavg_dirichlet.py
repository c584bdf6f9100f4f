r"""FedAvg on Dirichlet(0.3)-skewed MNIST-5k: 16 clients, 10 local steps.

FedAvg (McMahan et al., arXiv:1602.05629) as local SGD: plain SGD on each
client, the clients' optimizer state reset at every round (FedJAX, TFF),
the server model set to the clients' average (outer SGD at rate 1).

  python -m distoptax.experiments.train --config=local_fedavg_dirichlet \
      --workdir=runs/fedavg
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
      steps=1000,
      log_every=50,
      checkpoint_every=250,
  )
