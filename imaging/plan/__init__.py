"""The training plan: a composed ``train`` config checked once and what it derives.

- ``train.py``: :func:`~imaging.plan.train.validate_config` -> :class:`~imaging.plan.train.TrainPlan`
  (dataset, items, labels, network, preprocessing, run dir, monitored metric).
- ``identity.py``: the run's identity (the config hash in the run directory, resume policy).

Below pipelines, beside data and models: central training, the federated sites and the
launch pre-flight checks derive the same plan, and only apps may import pipelines.
"""
