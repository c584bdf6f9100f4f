r"""A small CNN on scikit-learn's 8x8 digits, shard_map over every device.

16 workers over the devices of every process (8 fake CPU devices here, a GPU
host's devices otherwise), Adam.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
  python -m distoptax.experiments.train --config=digits_cnn_mesh \
      --workdir=runs/digits_cnn_mesh
"""

from distoptax.experiments import config


def get_config():
  return config.config_dict(
      dataset="digits",
      model="cnn",
      num_workers=16,
      batch_size=8,
      steps=600,
      runtime="mesh",
      optimizer="adam",
      learning_rate=0.003,
      checkpoint_every=200,
  )
