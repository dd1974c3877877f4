"""Federated training across hospitals with Flower.

- :mod:`.site` - a hospital's side: our engine on its own dataset (weights and
  aggregate metrics out, nothing else);
- :mod:`.clientapp` / :mod:`.serverapp` - the Flower apps (the FAB in ``app/``);
- :mod:`.coordinator` - the round loop: checks, checkpoint/resume, dropouts, MLflow;
- :mod:`.strategy` - Flower's FedAvg/FedProx and DP wrappers from the config;
- :mod:`.processes` - start/stop a SuperLink and SuperNodes as real processes.
"""
