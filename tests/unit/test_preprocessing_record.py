"""The model's preprocessing as a versioned record: what bundle.json holds, what an old bundle reads as,
and what a reader refuses (by key). bundle.json is read back with plain ``json`` as the oracle."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from imaging.data.transforms import preprocessing_from_config
from imaging.models.registry import build_network
from imaging.records import PREPROCESSING_VERSION, Preprocessing
from imaging.resources import CONF_DIR
from imaging.tracking.registry import BUNDLE_JSON, read_bundle_dir, write_bundle


@pytest.fixture(scope="module")
def shipped() -> tuple[dict[str, Any], dict[str, Any]]:
    """(preprocessing, network config) of the shipped demo_seg experiment, as training derives them."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=demo_seg", "model.channels=[4,8]",
                                                      "model.strides=[2]"])
    data = OmegaConf.to_container(cfg.data, resolve=True)
    pre = preprocessing_from_config(data, {0: 0, 1: 2, 2: 1})  # type: ignore[arg-type]
    pre["precision"] = {"amp": True, "amp_dtype": "bfloat16"}
    net = {**OmegaConf.to_container(cfg.model, resolve=True), "out_channels": 3}  # type: ignore[dict-item]
    return pre, net


def _bundle(tmp_path: Path, shipped: tuple[dict[str, Any], dict[str, Any]]) -> Path:
    pre, net = shipped
    write_bundle(tmp_path, build_network(net), net, pre, {0: "background", 1: "liver", 2: "spleen"}, "segmentation")
    return tmp_path / BUNDLE_JSON


def _rewrite(path: Path, change: Any) -> None:
    raw = json.loads(path.read_text(encoding="utf-8"))
    change(raw["preprocessing"])
    path.write_text(json.dumps(raw), encoding="utf-8")


def test_bundle_holds_todays_dict_plus_version(tmp_path: Path, shipped: tuple[dict[str, Any], dict[str, Any]]) -> None:
    pre, _ = shipped
    stored = json.loads(_bundle(tmp_path, shipped).read_text(encoding="utf-8"))["preprocessing"]
    assert stored == {**pre, "version": 1} and PREPROCESSING_VERSION == 1
    assert stored["label_mapping"] == {"0": 0, "1": 2, "2": 1} and stored["spacing"] == list(pre["spacing"])
    _, bundle = read_bundle_dir(tmp_path)
    assert bundle["preprocessing"] == stored


def test_record_round_trips_and_is_frozen(shipped: tuple[dict[str, Any], dict[str, Any]]) -> None:
    pre, _ = shipped
    record = Preprocessing.from_dict(pre)
    assert record.roi_size == tuple(pre["roi_size"]) and record.version == 1
    assert Preprocessing.from_dict(record.to_dict()) == record
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.task = "classification"  # type: ignore[misc]
    classification = {k: v for k, v in pre.items() if k not in ("label_mapping", "precision")}
    assert Preprocessing.from_dict(classification).to_dict() == {**classification, "version": 1}


def test_a_bundle_without_version_reads_as_version_1(tmp_path: Path,
                                                      shipped: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """Bundles registered before the record existed have no version: same keys, read as 1."""
    path = _bundle(tmp_path, shipped)
    _rewrite(path, lambda p: p.pop("version"))
    assert "version" not in json.loads(path.read_text(encoding="utf-8"))["preprocessing"]
    _, bundle = read_bundle_dir(tmp_path)
    assert bundle["preprocessing"] == {**shipped[0], "version": 1}


@pytest.mark.parametrize(("change", "key"), [
    (lambda p: p.update(version=2), "preprocessing.version"),
    (lambda p: p.pop("roi_size"), "preprocessing.roi_size"),
    (lambda p: p.pop("intensity"), "preprocessing.intensity"),
    (lambda p: p.update(resample="trilinear"), "preprocessing.resample"),
])
def test_a_reader_refuses_by_key(tmp_path: Path, shipped: tuple[dict[str, Any], dict[str, Any]], change: Any,
                                 key: str) -> None:
    path = _bundle(tmp_path, shipped)
    _rewrite(path, change)
    with pytest.raises(ValueError, match=f"^'{path}': {key}: "):
        read_bundle_dir(tmp_path)


def test_writing_refuses_a_preprocessing_without_a_required_key(
        tmp_path: Path, shipped: tuple[dict[str, Any], dict[str, Any]]) -> None:
    pre, net = shipped
    broken = {k: v for k, v in pre.items() if k != "spacing"}
    with pytest.raises(ValueError, match="^preprocessing.spacing: missing"):
        write_bundle(tmp_path, build_network(net), net, broken, {0: "background"}, "segmentation")
    assert not any(tmp_path.iterdir())  # refused before any file is written
