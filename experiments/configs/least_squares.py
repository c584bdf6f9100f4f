r"""Synthetic least squares with a known optimum, linear model, 8 workers.

  python -m distoptax.experiments.train --config=least_squares \
      --workdir=runs/least_squares
"""

from distoptax.experiments import config


def get_config():
  return config.config_dict(
      dataset="least_squares",
      model="linear",
      batch_size=8,
      steps=500,
      learning_rate=0.05,
      momentum=0.0,
      log_every=25,
  )
