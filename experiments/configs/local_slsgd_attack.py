r"""SLSGD under attack: 10 workers, 2 of them send scaled negative models.

SLSGD (Xie, Koyejo, Gupta, arXiv:1903.06996): local SGD whose sync takes
the coordinate-wise trimmed mean of the workers' models (2 trimmed from
each end) and mixes it into the global model with weight alpha = 0.5 (the
outer SGD rate on the pseudo-gradient). The Byzantine workers send their
pseudo-gradient negated and scaled by 4, i.e. the model
x + 4 (w_i - x). With ``--config.aggregator=mean
--config.outer_learning_rate=1`` (FedAvg) the run collapses.

  python -m distoptax.experiments.train --config=local_slsgd_attack \
      --workdir=runs/slsgd
"""

from distoptax.experiments import config


def get_config():
  return config.config_dict(
      num_workers=10,
      algorithm="local_sgd",
      period=5,
      state_policy="reset",
      momentum=0.0,
      aggregator="trimmed_mean",
      num_byzantine=2,
      attack="sign_flip",
      attack_params={"scale": 4.0},
      outer_learning_rate=0.5,
      steps=600,
      log_every=30,
      checkpoint_every=150,
  )
