"""The shipped Hydra configs (``pkg://imaging.conf``): one folder per config group.

A site adds its own experiments, cluster profiles and selection rules in a folder of
its own, on Hydra's search path (``IMAGING_CONFIG_DIR`` or ``--config-dir``); see
:mod:`imaging.resources`.
"""
