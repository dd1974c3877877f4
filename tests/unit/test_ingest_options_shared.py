"""`imaging ingest` and `imaging infer` share one ingest_options group: the same keys, the same ingest."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from imaging.dicom.catalog import read_catalog
from imaging.keys import Pseudonymizer
from imaging.pipelines.infer.inputs import resolve_input
from imaging.pipelines.ingest import ingest_options
from imaging.resources import CONF_DIR
from tests.fixtures.datasets import stack_positions, write_slices

CHANGED = ["tilt=refuse", "uneven=resample", "split_4d=true", "philips_precise=true",
           "keep_patient_characteristics=true", "deid_options.keep_age_90_plus=true",
           "deid_options.withhold.allow_rules=[burned-in-annotation]"]


def _compose(command: str, *overrides: str):  # -> DictConfig
    required = {"ingest": ["input_dir=x", "output_dir=y"], "infer": ["model_uri=m", "input=x", "output_dir=y"]}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(command, overrides=[*required[command], *overrides])


def test_both_commands_take_the_same_keys_with_the_same_defaults() -> None:
    assert ingest_options(_compose("ingest")) == ingest_options(_compose("infer"))
    ingest, infer = ingest_options(_compose("ingest", *CHANGED)), ingest_options(_compose("infer", *CHANGED))
    assert ingest == infer
    assert ingest["tilt"] == "refuse" and ingest["uneven"] == "resample" and ingest["split_4d"] is True
    assert ingest["keep_age_90_plus"] is True and "burned-in-annotation" in ingest["withhold"].allow_rules
    assert ingest != ingest_options(_compose("ingest"))


def test_infer_ingests_an_export_with_its_options(tmp_path: Path) -> None:
    """A gantry-tilted CT: resampled by default, an error row with `imaging infer ... tilt=refuse`."""
    write_slices(tmp_path / "export" / "s", stack_positions(5, gap=2.0, drift=(0.0, 0.5, 0.0)))
    ps = Pseudonymizer.from_config(demo_key=True)
    for tilt, status in (("resample", "ok"), ("refuse", "error")):
        out = tmp_path / f"out-{tilt}"
        cfg = _compose("infer", f"tilt={tilt}")
        dataset, _ = resolve_input(tmp_path / "export", out, ps, None, workers=1, progress=False,
                                   **ingest_options(cfg))
        (row,) = read_catalog(dataset / "catalog.csv")
        assert row.status == status, (tilt, row.reason)
