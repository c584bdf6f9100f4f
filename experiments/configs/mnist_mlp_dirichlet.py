r"""Label skew, stragglers and a parameter server, 16 workers.

Worker shards follow Dirichlet(0.3) class proportions; each step's compute
time gets exponential straggler noise; the topology is a parameter server
with a 1 Gbit/s link.

  python -m distoptax.experiments.train --config=mnist_mlp_dirichlet \
      --workdir=runs/skew
"""

from distoptax.experiments import config


def get_config():
  return config.config_dict(
      partition="dirichlet",
      dirichlet_alpha=0.3,
      num_workers=16,
      batch_size=16,
      straggler="exponential",
      straggler_params={"mean": 0.005},
      topology="parameter_server",
      bandwidth=1.25e8,
  )
