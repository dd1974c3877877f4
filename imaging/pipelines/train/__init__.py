"""The training pipeline (``imaging train``): one run, single process or DDP.

- ``run.py``: :func:`~imaging.pipelines.train.run.run` -> ``TrainResult``: set-up, the epoch
  loop around :mod:`imaging.engine`, checkpoints, registration of the best epoch.
- ``resume.py``: what a run finds in its run directory (identity, last checkpoint,
  ``finished.json``): resume, refuse, or nothing to do.
- ``tracker.py``: what the run needs of experiment tracking (rank 0) and which MLflow run
  it continues.

The config checks and the run's identity are in :mod:`imaging.plan` (the federated sites
and the launch checks use them too, and only apps import pipelines).
"""
