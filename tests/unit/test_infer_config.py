"""The shipped `conf/infer.yaml`: shard defaults from the Slurm array, segment codes, options."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from imaging.engine.predict import InferenceOptions
from imaging.pipelines.infer.run import _shard, _window
from imaging.resources import CONF_DIR

CONF = CONF_DIR


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("infer", overrides=["model_uri=models:/m@champion", "input=/x", "output_dir=/y",
                                           "paths.root_dir=/tmp", *overrides])


def test_shard_defaults_from_slurm_array(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(var, raising=False)
    assert _shard(_cfg()) == (0, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "3")  # --array=3-6
    assert _shard(_cfg()) == (2, 4)
    assert _shard(_cfg("shard.index=1", "shard.count=2", "shard.offset=0")) == (1, 2)


def test_segment_codes_and_options() -> None:
    cfg = _cfg()
    segments = OmegaConf.to_container(cfg.segments)
    assert {k: v["type"]["value"] for k, v in segments.items()} == {
        "liver": "10200004", "spleen": "78961009", "kidney": "64033007"}
    assert all(v["category"] == {"value": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"}
               for v in segments.values())
    opts = InferenceOptions.from_config(OmegaConf.to_container(cfg.inference))
    assert (opts.mode, opts.overlap, opts.amp, opts.tta_flip) == ("gaussian", 0.25, True, False)
    assert cfg.seg.identity == "deidentified" and cfg.tracking.experiment_name == "inference"
    assert _window({"intensity": {"kind": "window", "a_min": -200, "a_max": 300}}) == (-200.0, 300.0)
    assert _window({"intensity": {"kind": "percentile"}}) is None
