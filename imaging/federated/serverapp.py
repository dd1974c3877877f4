"""The Flower ServerApp: the coordinator's side of ``imaging federate``.

Flower's SuperLink starts it for a run; ``config`` in the run config names the
coordinator's resolved ``federate`` config (written by ``imaging federate``). It runs
:func:`imaging.federated.coordinator.run_federation` and logs to MLflow.
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf

from imaging.federated.coordinator import run_federation

log = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = OmegaConf.load(str(context.run_config["config"]))
    assert isinstance(cfg, DictConfig)
    if cfg.get("evaluation"):  # `imaging evaluate`: cross-site evaluation of a registered model (issue 31)
        from imaging.federated.cross_site import run_cross_site

        run_cross_site(grid, cfg)
        return
    tracker = None
    if bool(cfg.tracking.get("enabled", True)):
        from imaging.selection.apply import rule_for_registry
        from imaging.tracking.federation import FederationTracker

        tracker = FederationTracker(cfg, series_rule=rule_for_registry(cfg))
    try:
        run_federation(grid, cfg, tracker)
    except BaseException:
        if tracker is not None:
            tracker.fail()
        raise
