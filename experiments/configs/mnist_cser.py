r"""CSER on MNIST-5k: about 37x less traffic than SGD at nearly its accuracy.

Xie et al., "CSER: Communication-efficient SGD with Error Reset"
(arXiv:2007.13221), as the authors' trainer runs it: each step the workers
move by a block-sparsified average of their Nesterov-SGD updates (one
random block of 1/64 of each tensor, chosen with a shared key); every 4
steps the residuals are reset through a block of 1/16. The test metrics are
those of the workers' mean model.

  python -m distoptax.experiments.train --config=mnist_cser \
      --workdir=runs/cser
"""

from distoptax.experiments import config


def get_config():
  return config.config_dict(
      algorithm="cser",
      period=4,
      cser_ratio1=64.0,
      cser_ratio2=16.0,
      learning_rate=0.1,
      momentum=0.9,
      nesterov=True,
      steps=1500,
      log_every=50,
      checkpoint_every=250,
  )
