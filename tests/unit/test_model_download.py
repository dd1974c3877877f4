"""`load_bundle` fetches the bundle's two files, and a model logged in another layout whole."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from imaging.models.registry import build_network
from imaging.tracking.registry import (
    BUNDLE_FORMAT,
    BUNDLE_JSON,
    WEIGHTS,
    _download_bundle,
    read_bundle_dir,
)

NET = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8],
       "strides": [2], "num_res_units": 0}
# A bundle.json as write_bundle makes it (written by hand here: the test is about the files).
PRE = {"task": "segmentation", "modality": "CT", "orientation": "RAS", "spacing": [4.0, 4.0, 5.0],
       "intensity": {"kind": "window", "a_min": -200, "a_max": 300}, "roi_size": [16, 16, 8], "version": 1}


def _bundle(folder: Path) -> dict:
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    net = build_network(NET)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / WEIGHTS))
    (folder / BUNDLE_JSON).write_text(json.dumps({"format": BUNDLE_FORMAT, "network_config": NET,
                                                       "preprocessing": PRE}))
    return net.state_dict()


def test_only_the_bundle_files_are_downloaded(tmp_path: Path) -> None:
    model = tmp_path / "store" / "model"
    expected = _bundle(model / "artifacts")
    for i in range(5):  # the pyfunc's code folder: not needed for inference
        (model / "code" / "imaging").mkdir(parents=True, exist_ok=True)
        (model / "code" / "imaging" / f"m{i}.py").write_text("x = 1\n")
    got = _download_bundle(model.as_uri(), tmp_path / "dl", "sqlite:///" + str(tmp_path / "unused.db"))
    assert sorted(p.name for p in got.rglob("*") if p.is_file()) == sorted([BUNDLE_JSON, WEIGHTS])
    net, _ = read_bundle_dir(got)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in expected.items())


def test_another_layout_is_downloaded_whole(tmp_path: Path) -> None:
    model = tmp_path / "store" / "model"
    _bundle(model / "data")  # not under artifacts/
    got = _download_bundle(model.as_uri(), tmp_path / "dl", "sqlite:///" + str(tmp_path / "unused.db"))
    net, bundle = read_bundle_dir(got)
    assert bundle["network_config"] == NET and (got / "data" / WEIGHTS).is_file()
