r"""RPS: data-parallel SGD over a network that drops 10% of the messages.

Yu, Tang, Renggli, Kassing, Singla, Alistarh, Zhang & Liu
(arXiv:1810.07766): 8 workers on MNIST-5k, each holding its own replica;
every step each worker takes a local SGD step, sends block j of its model
to server j (reduce-scatter) and receives the averaged blocks back
(all-gather); each worker-server message is lost with probability p (the
colocated block never is), and a worker that misses a block keeps its own.
The evaluated model is the workers' mean. Lines report ``drops`` (messages
lost since the last line), ``drops_total`` and ``delivered_bytes``. A lost
message was still sent: the clock charges the full reduce-scatter and
all-gather every step, whatever p.

  python -m distoptax.experiments.train --config=rps_unreliable \
      --workdir=runs/rps_p0.1
  python -m distoptax.experiments.train --config=rps_unreliable \
      --config.drop_probability=0.0 --workdir=runs/rps_p0
  python -m distoptax.experiments.train --config=rps_unreliable \
      --config.drop_probability=0.3 --workdir=runs/rps_p0.3
"""

from distoptax.experiments import config


def get_config():
  return config.config_dict(
      algorithm="rps",
      drop_probability=0.1,
      momentum=0.0,
      steps=1000,
      log_every=50,
      checkpoint_every=250,
  )
