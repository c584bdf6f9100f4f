r"""The main job: 8 simulated workers, MLP 784-128-10 on MNIST-5k.

Mean aggregation, SGD with momentum; the launcher's default.

  python -m distoptax.experiments.train --config=mnist_mlp \
      --workdir=runs/mnist_mlp
"""

from distoptax.experiments import config


def get_config():
  return config.config_dict()
