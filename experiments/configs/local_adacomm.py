r"""AdaComm on MNIST-5k with exponential stragglers: the period follows the loss.

Wang & Joshi (arXiv:1810.08313): local SGD starting at tau_0 = 8 whose
period is recomputed as ceil(sqrt(F / F_0) tau_0) (clipped to [1, 16])
every 0.5 simulated seconds from the all-reduced training loss. Compute
times are 10 ms plus exponential straggler noise; the ring's links are
1 Gbit/s, so syncs are not free. Metrics show the period shrinking.

  python -m distoptax.experiments.train --config=local_adacomm \
      --workdir=runs/adacomm
"""

from distoptax.experiments import config


def get_config():
  return config.config_dict(
      algorithm="adacomm",
      period=8,
      adacomm_tau_max=16,
      adacomm_interval_seconds=0.5,
      momentum=0.0,
      straggler="exponential",
      straggler_params={"mean": 0.005},
      bandwidth=1.25e8,
      steps=800,
      log_every=40,
      checkpoint_every=200,
  )
