"""Training config validation and subject splits, on the shipped config shrunk with compose()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig

from imaging.data.splits import split_by_subject
from imaging.pipelines.train.run import run
from imaging.plan.train import ConfigError, validate_config
from imaging.resources import CONF_DIR
from tests.fixtures.train_data import make_train_dataset

CONF = str(CONF_DIR)


def shipped(tmp: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=["experiment=demo_seg", f"paths.root_dir={tmp}", *overrides])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_train_dataset(tmp_path_factory.mktemp("ds"), subjects=8, shape=(16, 16, 8))


def _key(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    return excinfo.value.key


def test_shipped_experiments_validate(tmp_path: Path, dataset: Path) -> None:
    for extra in ([], ["model=segresnet"], ["model=unet"], ["model=dynunet"],
                  ["experiment=ct_organs", "data.split.folds=4", "trainer.accelerator=auto"]):
        plan = validate_config(shipped(tmp_path, f"data.dataset_dir={dataset}", *extra))
        assert plan.num_classes == 4
        assert plan.class_names[1] == "liver"
        assert plan.network_config["out_channels"] == 4
        assert plan.run_dir.parent.parent == tmp_path / "runs"


def test_unknown_group_option_names_the_group(tmp_path: Path) -> None:
    with pytest.raises(HydraException, match="model/no_such_net"):
        shipped(tmp_path, "model=no_such_net")


def test_dataset_dir_required_and_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        validate_config(shipped(tmp_path))
    assert _key(excinfo) == "data.dataset_dir"
    with pytest.raises(ConfigError, match="does not exist") as excinfo:
        validate_config(shipped(tmp_path, f"data.dataset_dir={tmp_path / 'nowhere'}"))
    assert _key(excinfo) == "data.dataset_dir"


def test_labels_must_exist_in_dataset_json(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(ConfigError, match="pancreas") as excinfo:
        validate_config(shipped(tmp_path, f"data.dataset_dir={dataset}", "data.labels=[liver,pancreas]"))
    assert _key(excinfo) == "data.labels"
    plan = validate_config(shipped(tmp_path, f"data.dataset_dir={dataset}", "data.labels=[kidney,liver]"))
    assert plan.class_names == {0: "background", 1: "kidney", 2: "liver"}
    assert plan.preprocessing["label_mapping"] == {"0": 0, "1": 2, "2": 0, "3": 1}


def test_catalog_without_labels_is_refused(tmp_path: Path, dataset: Path) -> None:
    copy = tmp_path / "nolabels"
    copy.mkdir()
    text = (dataset / "catalog.csv").read_text().replace("labels/", "")
    lines = text.splitlines()
    header = lines[0].split(",")
    col = header.index("label_path")
    rows = [",".join(v if i != col else "" for i, v in enumerate(line.split(","))) for line in lines[1:]]
    (copy / "catalog.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    (copy / "dataset.json").write_text((dataset / "dataset.json").read_text())
    with pytest.raises(ConfigError, match="label_path") as excinfo:
        validate_config(shipped(tmp_path, f"data.dataset_dir={copy}"))
    assert _key(excinfo) == "data.dataset_dir"


def test_bad_values_name_their_key(tmp_path: Path, dataset: Path) -> None:
    cases = {
        "data.cache": ["data.cache=ram"],
        "model.channels": ["model=segresnet", "+model.channels=[8,16]"],
        "trainer.max_epochs": ["trainer.max_epochs=0"],
        "data.split.folds": ["data.split.folds=20"],
        "data.preprocessing.intensity": ["data.modality=CT", "~data.preprocessing.intensity.CT"],
    }
    for key, overrides in cases.items():
        with pytest.raises(ConfigError) as excinfo:
            validate_config(shipped(tmp_path, f"data.dataset_dir={dataset}", *overrides))
        assert _key(excinfo) == key, (key, str(excinfo.value))


def test_types_and_ranges_are_checked_at_compose_time(tmp_path: Path, dataset: Path) -> None:
    cases = {
        "trainer.lr": ["trainer.lr=-0.1"],
        "trainer.amp": ["trainer.amp=maybe"],
        "trainer.max_epochs": ["trainer.max_epochs=2.5"],
        "trainer.grad_clip_norm": ["trainer.grad_clip_norm=0"],
        "trainer.amp_dtype": ["trainer.amp_dtype=float8"],
        "trainer.scheduler.kind": ["trainer.scheduler.kind=step"],
        "trainer.sw_overlap": ["trainer.sw_overlap=1.5"],
        "data.augment.noise_prob": ["data.augment.noise_prob=2"],
        "data.augment.gamma_range": ["data.augment.gamma_range=[0.7]"],
        "data.image_dtype": ["data.image_dtype=int8"],
        "data.patch_size": ["data.patch_size=[16,16,0]"],
        "data.split.fold": ["data.split.fold=-1"],
    }
    for key, overrides in cases.items():
        with pytest.raises(ConfigError) as excinfo:
            validate_config(shipped(tmp_path, f"data.dataset_dir={dataset}", *overrides))
        assert _key(excinfo) == key, (key, str(excinfo.value))
        assert key in str(excinfo.value)
    # A null where one is allowed passes.
    validate_config(shipped(tmp_path, f"data.dataset_dir={dataset}", "trainer.grad_clip_norm=null"))


def test_gpu_asked_for_but_absent_is_a_config_error(tmp_path: Path, dataset: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this machine, whatever it has
    for value in ("gpu", "cuda"):
        with pytest.raises(ConfigError, match="no CUDA device") as excinfo:
            validate_config(shipped(tmp_path, f"data.dataset_dir={dataset}", f"trainer.accelerator={value}"))
        assert _key(excinfo) == "trainer.accelerator"


def test_invalid_config_fails_before_any_work(tmp_path: Path, dataset: Path) -> None:
    cfg = shipped(tmp_path, f"data.dataset_dir={dataset}", "data.labels=[spleen,heart]")
    with pytest.raises(ConfigError):
        run(cfg)
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "mlflow").exists()


def test_split_by_subject_is_disjoint_complete_and_deterministic(tmp_path: Path) -> None:
    items = [{"series_key": f"s{i}_{j}", "subject_key": f"p{i}", "image": "", "label": ""}
             for i in range(10) for j in range(3)]
    subjects = {i["subject_key"] for i in items}
    val_union: set[str] = set()
    for fold in range(5):
        split = split_by_subject(items, folds=5, fold=fold, seed=7)
        train_s = {i["subject_key"] for i in split.train}
        val_s = {i["subject_key"] for i in split.val}
        assert not train_s & val_s
        assert train_s | val_s == subjects
        assert len(split.train) + len(split.val) == len(items)
        assert split.to_json() == split_by_subject(list(reversed(items)), 5, fold, 7).to_json()
        val_union |= val_s
        json.dumps(split.to_json())
        assert "image" not in json.dumps(split.to_json())
    assert val_union == subjects  # k-fold: every subject validates exactly once
    assert split_by_subject(items, 5, 0, 7).to_json() != split_by_subject(items, 5, 0, 8).to_json()
    with pytest.raises(ValueError, match="fold"):
        split_by_subject(items, folds=5, fold=5, seed=0)
