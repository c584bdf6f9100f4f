r"""DiLoCo on MNIST-5k: inner AdamW, outer Nesterov SGD (0.7, momentum 0.9).

Douillard et al. (arXiv:2311.08105): each worker runs AdamW (b1 0.9, b2
0.95, weight decay 0.1) for 20 steps with its state kept across rounds;
the averaged pseudo-gradient goes through SGD with Nesterov momentum 0.9
at rate 0.7.

  python -m distoptax.experiments.train --config=local_diloco \
      --workdir=runs/diloco
"""

from distoptax.experiments import config


def get_config():
  return config.config_dict(
      algorithm="local_sgd",
      period=20,
      state_policy="keep",
      optimizer="adamw",
      learning_rate=1e-3,
      momentum=0.9,
      b2=0.95,
      weight_decay=0.1,
      outer_learning_rate=0.7,
      outer_momentum=0.9,
      outer_nesterov=True,
      steps=1000,
      log_every=50,
      checkpoint_every=250,
  )
