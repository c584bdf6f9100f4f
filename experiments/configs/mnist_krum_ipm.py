r"""Fall of Empires in one run: Krum under inner product manipulation.

25 workers, 11 of them Byzantine sending -0.1 x the mean of the honest
gradients. Krum then keeps picking a Byzantine update and accuracy
collapses: the log's ``any_byzantine_selected_fraction`` (the fraction of
steps on which the rule kept some Byzantine update) is close to 1, while
``byzantine_selected_fraction_mean`` (how often one Byzantine worker was
kept, averaged over them) is about 1/11, since Krum keeps one worker per step.
With ``--config.aggregator=zeno --config.aggregator_params.rho=0.0005`` the
run survives.

  python -m distoptax.experiments.train --config=mnist_krum_ipm \
      --workdir=runs/krum_ipm
"""

from distoptax.experiments import config


def get_config():
  return config.config_dict(
      num_workers=25,
      batch_size=16,
      steps=500,
      momentum=0.0,
      aggregator="krum",
      num_byzantine=11,
      attack="inner_product_manipulation",
      attack_params={"epsilon": 0.1},
  )
