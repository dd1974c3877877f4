"""trainer.monitor / monitor_mode are checked at compose time against the metrics the run computes.

The oracle is what :func:`imaging.engine.loops.validate` really returns for the run's labels: a
monitor accepted here must be a key of that dict (so never NaN for want of a name), and a
monitor refused here would have been missing from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imaging.engine.distributed import Dist, DistEnv
from imaging.engine.loops import validate
from imaging.plan.train import ConfigError, validate_config
from tests.fixtures.train_data import compose_train, make_train_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_train_dataset(tmp_path_factory.mktemp("ds"), subjects=6, shape=(16, 16, 8))


def _refused(tmp_path: Path, dataset: Path, *overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as excinfo:
        validate_config(compose_train(tmp_path, dataset, *overrides))
    return excinfo.value


def _metrics_of_validate(num_classes: int, names: dict[int, str], hd95: bool) -> set[str]:
    """The keys validate() returns on a two-case loader holding every label."""
    label = torch.zeros(1, 1, 8, 8, 8)
    for value in range(1, num_classes):
        label[..., 2 * value - 1:2 * value, 2:6, 2:6] = value
    loader = [{"image": torch.zeros(1, 1, 8, 8, 8), "label": label}] * 2

    class Perfect(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(label[:, 0].long(), num_classes).movedim(-1, 1).float()

    out = validate(model=Perfect(), loader=loader, task="segmentation", num_classes=num_classes, names=names,
                   d=Dist(env=DistEnv(), device=torch.device("cpu")), roi_size=[8, 8, 8],
                   hd95=hd95, progress=False)
    return set(out)


def test_misspelt_label_is_refused_with_the_closest_name(tmp_path: Path, dataset: Path) -> None:
    err = _refused(tmp_path, dataset, "trainer.monitor=dice_livr")
    assert err.key == "trainer.monitor" and "did you mean 'dice_liver'" in str(err)


def test_hd95_monitor_needs_hd95_on(tmp_path: Path, dataset: Path) -> None:
    err = _refused(tmp_path, dataset, "trainer.monitor=hd95_liver")
    assert err.key == "trainer.monitor" and "trainer.hd95=true" in str(err)


def test_mode_against_the_metric_is_refused(tmp_path: Path, dataset: Path) -> None:
    err = _refused(tmp_path, dataset, "trainer.monitor=hd95_liver", "trainer.hd95=true", "trainer.monitor_mode=max")
    assert err.key == "trainer.monitor_mode" and "min" in str(err)
    err = _refused(tmp_path, dataset, "trainer.monitor=dice_spleen", "trainer.monitor_mode=min")
    assert err.key == "trainer.monitor_mode"


def test_auto_mode_follows_the_metric_and_accepted_monitors_are_computed(tmp_path: Path, dataset: Path) -> None:
    plan = validate_config(compose_train(tmp_path, dataset, "trainer.monitor=hd95_kidney", "trainer.hd95=true"))
    assert (plan.monitor, plan.monitor_mode) == ("hd95_kidney", "min")
    plan = validate_config(compose_train(tmp_path, dataset))
    assert (plan.monitor, plan.monitor_mode) == ("dice_mean", "max")
    computed = _metrics_of_validate(plan.num_classes, plan.class_names, hd95=True)
    for monitor in ("dice_mean", "dice_liver", "dice_spleen", "dice_kidney", "hd95_liver", "hd95_mean"):
        assert validate_config(compose_train(tmp_path, dataset, f"trainer.monitor={monitor}",
                                             "trainer.hd95=true")).monitor in computed
    assert "hd95_liver" not in _metrics_of_validate(plan.num_classes, plan.class_names, hd95=False)


def test_cli_exit_2_names_the_key(tmp_path: Path, dataset: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MLFLOW_TRACKING_URI")}
    proc = subprocess.run([sys.executable, "-m", "imaging", "train", "experiment=demo_seg",
                           f"paths.root_dir={tmp_path}", f"data.dataset_dir={dataset}", "trainer.monitor=dice_livr"],
                          cwd=tmp_path, env={**env, "IMAGING_ROOT": str(tmp_path)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if "trainer.monitor" in ln]
    assert len(lines) == 1 and "dice_livr" in lines[0] and "Traceback" not in proc.stderr
