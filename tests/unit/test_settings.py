"""Typed settings checked at compose time (issue 30): every group of every command.

Each rule: a bad value composed as the command composes it (``imaging.apps.api.compose``, which
runs the command's check) raises a UsageError naming the dotted key; on the real CLI it exits 2
with one line naming it, before any work. Every shipped config (experiments, launchers,
tracking, selection rules) passes, and every key of a checked group is declared, so a key
added to a YAML file without a type fails here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from omegaconf import DictConfig, OmegaConf

from imaging.apps.api import compose
from imaging.errors import UsageError
from imaging.resources import CONF_DIR
from imaging.settings import COMMANDS, SettingsError, build, check_command
from imaging.settings.check import check_node
from imaging.settings.inference import InferenceSettings
from imaging.settings.ingest import IngestOptions
from tests.unit.test_cli_errors import assert_one_line, imaging

# The required keys of each command (paths are never opened by composing).
BASE: dict[str, list[str]] = {
    "train": ["experiment=demo_seg"],
    "federate": ["experiment=demo_federated"],
    "evaluate": ["experiment=demo_federated", "model_uri=models:/m@champion"],
    "infer": ["model_uri=models:/m@champion", "input=/in", "output_dir=/out"],
    "ingest": ["input_dir=/in", "output_dir=/out"],
    "deid": ["input_dir=/in", "output_dir=/out"],
    "pull": ["url=http://pacs:8042/dicom-web", "output_dir=/out"],
    "synth": ["output_dir=/out"],
}

# (command, override, the key the error must name): one row per declared rule.
RULES: list[tuple[str, str, str]] = [
    # inference (imaging infer; imaging evaluate composes the same group)
    ("infer", "inference.overlap=1.0", "inference.overlap"),
    ("infer", "inference.overlap=-0.1", "inference.overlap"),
    ("infer", "inference.mode=median", "inference.mode"),
    ("infer", "inference.sw_batch_size=0", "inference.sw_batch_size"),
    ("infer", "inference.device=gpu", "inference.device"),
    ("infer", "inference.device=cuda:x", "inference.device"),
    ("infer", "inference.threads=0", "inference.threads"),
    ("infer", "inference.roi_size=[64,64]", "inference.roi_size"),
    ("infer", "inference.amp=maybe", "inference.amp"),
    ("evaluate", "inference.mode=median", "inference.mode"),
    # infer's own keys
    ("infer", "shard.count=0", "shard.count"),
    ("infer", "shard.index=-1", "shard.index"),
    ("infer", "prefetch=-1", "prefetch"),
    ("infer", "prefetch_workers=-1", "prefetch_workers"),
    ("infer", "write_workers=-2", "write_workers"),
    ("infer", "fail_on_error=sometimes", "fail_on_error"),
    ("infer", "output.rtstruct=yes", "output.rtstruct"),
    ("infer", "seg.identity=raw", "seg.identity"),
    ("infer", "seg.type=FRACTIONAL", "seg.type"),
    ("infer", "seg.geometry=tilted", "seg.geometry"),
    ("infer", "seg.dimse.port=70000", "seg.dimse.port"),
    # ingest_options, at the top level of ingest and infer
    ("ingest", "tilt=maybe", "tilt"),
    ("infer", "tilt=maybe", "tilt"),
    ("ingest", "uneven=interpolate", "uneven"),
    ("ingest", "philips_precise=2", "philips_precise"),
    ("ingest", "split_4d=perhaps", "split_4d"),
    ("infer", "keep_patient_characteristics=1", "keep_patient_characteristics"),
    ("ingest", "workers=0", "workers"),
    # deid_options, in deid, ingest and infer
    ("deid", "deid_options.retain_uids=perhaps", "deid_options.retain_uids"),
    ("deid", "deid_options.withhold.allow_rules=[screen-saver]", "deid_options.withhold.allow_rules"),
    ("ingest", "deid_options.keep_age_90_plus=3", "deid_options.keep_age_90_plus"),
    ("infer", "deid_options.clean_descriptors=no", "deid_options.clean_descriptors"),
    ("deid", "deid_options.safe_private=5", "deid_options.safe_private"),
    ("deid", "allow_ultrasound=maybe", "allow_ultrasound"),
    # launcher (train composes it; submit checks the job's launcher)
    ("train", "launcher.name=pbs", "launcher.name"),
    ("train", "launcher=slurm launcher.nodes=0", "launcher.nodes"),
    ("train", "launcher=slurm launcher.gpus_per_node=-1", "launcher.gpus_per_node"),
    ("train", "launcher=slurm launcher.cpus_per_task=0", "launcher.cpus_per_task"),
    ("train", "launcher=slurm launcher.tasks_per_node=0", "launcher.tasks_per_node"),
    ("train", "launcher=slurm launcher.array_tasks=0", "launcher.array_tasks"),
    ("train", "launcher=cluster_h100 launcher.array_throttle=0", "launcher.array_throttle"),
    ("train", "launcher=slurm launcher.signal_lead_s=-5", "launcher.signal_lead_s"),
    ("train", "launcher=slurm launcher.max_requeues=-1", "launcher.max_requeues"),
    ("train", "launcher=slurm launcher.exclusive=perhaps", "launcher.exclusive"),
    # federation (federate, evaluate)
    ("federate", "federation.strategy=fedsgd", "federation.strategy"),
    ("federate", "federation.rounds=0", "federation.rounds"),
    ("federate", "++federation.baselines=[pooled,each]", "federation.baselines"),
    ("federate", "++federation.local_optimizer=reset", "federation.local_optimizer"),
    ("federate", "federation.local_epochs=0", "federation.local_epochs"),
    ("federate", "federation.proximal_mu=-1", "federation.proximal_mu"),
    ("federate", "federation.min_sites=0", "federation.min_sites"),
    ("federate", "federation.round_timeout_s=0", "federation.round_timeout_s"),
    ("federate", "federation.dp.mode=local", "federation.dp.mode"),
    ("federate", "federation.dp.noise_multiplier=-0.5", "federation.dp.noise_multiplier"),
    ("federate", "federation.dp.clipping_norm=0", "federation.dp.clipping_norm"),
    ("federate", "federation.dp.delta=1", "federation.dp.delta"),
    ("federate", "federation.slurm.port=0", "federation.slurm.port"),
    ("evaluate", "federation.connect_timeout_s=-1", "federation.connect_timeout_s"),
    # dicomweb (pull, infer) and pull's own keys
    ("pull", "dicomweb.auth.kind=digest", "dicomweb.auth.kind"),
    ("pull", "dicomweb.timeout_s=0", "dicomweb.timeout_s"),
    ("infer", "dicomweb.workers=0", "dicomweb.workers"),
    ("pull", "url=pacs:8042/dicom-web", "url"),
    # tracking (train, federate, evaluate, infer)
    ("train", "tracking.review_cases=-1", "tracking.review_cases"),
    ("infer", "tracking.connect_timeout_s=0", "tracking.connect_timeout_s"),
    ("federate", "tracking.register=perhaps", "tracking.register"),
    # evaluate, synth
    ("evaluate", "split=test", "split"),
    ("synth", "size=huge", "size"),
    ("synth", "layout=deep", "layout"),
    ("synth", "scanner=site9", "scanner"),
    ("synth", "subjects=-1", "subjects"),
    # trainer/data: checked at compose too, not only when the training plan is made
    ("train", "trainer.lr=-1", "trainer.lr"),
    ("federate", "data.batch_size=0", "data.batch_size"),
]


@pytest.mark.parametrize(("command", "override", "key"), RULES, ids=[f"{c}:{o}" for c, o, _ in RULES])
def test_a_bad_value_names_its_key(command: str, override: str, key: str) -> None:
    with pytest.raises(SettingsError) as excinfo:
        compose(command, [*BASE[command], *override.split()])
    assert excinfo.value.key == key, str(excinfo.value)
    assert isinstance(excinfo.value, UsageError)  # the CLI's exit 2
    assert f"'{key}'" in str(excinfo.value)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _experiments(federated: bool) -> list[str]:
    """Central experiments for train, those with a federation for federate and evaluate."""
    return [e for e in _options("experiment")
            if ("federation:" in (CONF_DIR / "experiment" / f"{e}.yaml").read_text()) == federated]


# Every shipped option of every group a command composes (each YAML file is composed once at least).
SHIPPED: list[tuple[str, list[str]]] = [
    *[("train", [f"experiment={e}"]) for e in _experiments(federated=False)],
    *[("train", ["experiment=demo_seg", f"model={m}"]) for m in _options("model")],
    *[("train", ["experiment=demo_seg", f"launcher={x}"]) for x in _options("launcher")],
    *[("train", ["experiment=demo_seg", f"tracking={t}"]) for t in _options("tracking")],
    ("train", ["experiment=demo_seg", "debug=fast", "data=classification", "model=densenet121"]),
    *[("federate", [f"experiment={e}"]) for e in _experiments(federated=True)],
    *[("evaluate", [f"experiment={e}", "model_uri=models:/m@champion"]) for e in _experiments(federated=True)],
    *[("infer", [*BASE["infer"], f"select={s}"]) for s in _options("inference/select")],
    ("infer", [*BASE["infer"], "tracking=server"]),
    *[(c, BASE[c]) for c in ("ingest", "deid", "pull", "synth")],
]


def _undeclared(node: Any, schema: type, prefix: str) -> list[str]:
    """Keys of a composed group that its dataclass does not declare (recursively)."""
    hints = get_type_hints(schema)
    names = {f.name for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
    out = [f"{prefix}.{k}" for k in node if k not in names]
    for name in names & set(node):
        if dataclasses.is_dataclass(hints[name]) and isinstance(node[name], DictConfig):
            out += _undeclared(node[name], hints[name], f"{prefix}.{name}")
    return out


@pytest.mark.parametrize(("command", "overrides"), SHIPPED, ids=[f"{c}:{' '.join(o)}" for c, o in SHIPPED])
def test_shipped_configs_pass_and_every_group_key_is_declared(command: str, overrides: list[str]) -> None:
    cfg = compose(command, overrides)  # checks; raises on any shipped value out of range
    for prefix, schema in COMMANDS[command]:
        if prefix:
            assert _undeclared(cfg[prefix], schema, prefix) == [], (command, overrides)


def test_the_launchers_of_submit_are_checked(tmp_path: Path) -> None:
    for launcher in ("slurm", "cluster_h100"):
        check_command("submit", compose("submit", [f"launcher={launcher}"]))
    with pytest.raises(SettingsError, match="launcher.array_tasks"):
        check_command("submit", compose("submit", ["launcher=slurm", "launcher.array_tasks=0"]))


def test_federation_on_slurm_checks_the_job_and_its_launcher(tmp_path: Path) -> None:
    """`python -m imaging.launch.federate` composes the federate config itself: the same check."""
    from imaging.launch.federate import prepare

    base = ["experiment=demo_federated", "launcher=slurm", f"run_dir={tmp_path}/run"]
    for override, key in (("federation.dp.mode=local", "federation.dp.mode"),
                          ("launcher.gpus_per_node=-1", "launcher.gpus_per_node")):
        with pytest.raises(SettingsError) as excinfo:
            prepare([*base, override], cwd=tmp_path)
        assert excinfo.value.key == key
    assert not (tmp_path / "run").exists()


def test_choices_copied_from_lower_layers_match_them() -> None:
    """settings import nothing above imaging.errors, so the choices they copy are compared here."""
    from monai.utils import BlendMode

    from imaging.deid.withhold import RULES as WITHHOLD
    from imaging.dicom.seg import GEOMETRIES
    from imaging.settings.commands import SYNTH_LAYOUTS, SYNTH_SCANNERS, SYNTH_SIZES
    from imaging.settings.deid import WITHHOLD_RULES
    from imaging.synth.export import LAYOUTS, SCANNERS, SIZES

    assert WITHHOLD_RULES == WITHHOLD
    assert set(SYNTH_SCANNERS) == set(SCANNERS) and set(SYNTH_SIZES) == set(SIZES) and SYNTH_LAYOUTS == LAYOUTS
    mode = {f.name: f for f in dataclasses.fields(InferenceSettings)}["mode"]
    assert set(mode.metadata["choices"]) == {m.value for m in BlendMode}  # MONAI's sliding-window blending
    geometry = {f.name: f for f in dataclasses.fields(IngestOptions)}
    assert set(geometry["tilt"].metadata["choices"]) == {"resample", "refuse"}
    from imaging.pipelines.ingest import POLICIES, UNEVEN_POLICIES

    assert set(geometry["tilt"].metadata["choices"]) == set(POLICIES)
    assert set(geometry["uneven"].metadata["choices"]) == set(UNEVEN_POLICIES)  # keep: geometry.native_runs
    from imaging.settings.inference import SegSettings

    assert {f.name: f for f in dataclasses.fields(SegSettings)}["geometry"].metadata["choices"] == GEOMETRIES


def test_device_accepts_what_torch_parses_as_a_cuda_index() -> None:
    import torch

    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        check_node(OmegaConf.create({"device": device}), InferenceSettings, "inference")
    for device in ("cuda:x", "gpu", "cuda:", "mps:0"):
        with pytest.raises(SettingsError, match="inference.device"):
            check_node(OmegaConf.create({"device": device}), InferenceSettings, "inference")
    assert torch.device("cuda:12").index == 12


def test_build_gives_the_typed_settings_of_a_composed_group() -> None:
    cfg = compose("infer", [*BASE["infer"], "inference.overlap=0.5", "inference.roi_size=[32,32,16]", "tilt=refuse"])
    opts = build(InferenceSettings, cfg.inference, "inference")
    assert (opts.overlap, opts.roi_size, opts.mode) == (0.5, [32, 32, 16], "gaussian")
    assert build(IngestOptions, cfg).tilt == "refuse"
    bad = OmegaConf.merge(compose("ingest", BASE["ingest"]), {"tilt": "x"})
    with pytest.raises(SettingsError, match="'tilt'"):
        build(IngestOptions, bad)  # type: ignore[arg-type]


# The real CLI: one bad value per command, exit 2, one line naming the key, nothing written.
CLI: list[tuple[list[str], str]] = [
    (["ingest", "input_dir={p}/export", "output_dir={p}/out", "demo_key=true", "tilt=maybe"], "tilt"),
    (["deid", "input_dir={p}/export", "output_dir={p}/out", "demo_key=true",
      "deid_options.withhold.allow_rules=[screen-saver]"], "deid_options.withhold.allow_rules"),
    (["synth", "output_dir={p}/out", "scanner=site9"], "scanner"),
    (["pull", "url=http://127.0.0.1:9/dicom-web", "output_dir={p}/out", "dicomweb.auth.kind=digest"],
     "dicomweb.auth.kind"),
    (["infer", "model=models:/m@champion", "input={p}/export", "output_dir={p}/out", "demo_key=true",
      "inference.overlap=1.5"], "inference.overlap"),
    (["submit", "ingest", "launcher=slurm", "launcher.cpus_per_task=0", "--dry-run", "input_dir={p}/export",
      "output_dir={p}/out", "demo_key=true"], "launcher.cpus_per_task"),
    # A job's own value: refused even in a dry run (which only warns about what the job would find).
    (["submit", "ingest", "launcher=slurm", "--dry-run", "input_dir={p}/export", "output_dir={p}/out",
      "demo_key=true", "workers=0"], "workers"),
]


@pytest.mark.parametrize(("args", "key"), CLI, ids=[a[0] for a, _ in CLI])
def test_the_cli_exits_2_naming_the_key(tmp_path: Path, args: list[str], key: str) -> None:
    from imaging.project import write_marker

    write_marker(tmp_path)
    (tmp_path / "export").mkdir()
    line = assert_one_line(imaging([a.format(p=tmp_path) for a in args], tmp_path), f"'{key}'")
    assert line.startswith(f"imaging {args[0]}"), line
    assert not (tmp_path / "out").exists()  # nothing done


def test_push_checks_take_the_typed_seg_settings() -> None:
    """pipelines.infer.remote.check_push_config reads the checked ``seg`` dataclass, not the DictConfig."""
    from imaging.pipelines.infer.remote import check_push_config
    from imaging.settings.inference import SegSettings

    def seg(*overrides: str) -> SegSettings:
        cfg = compose("infer", [*BASE["infer"], *overrides])
        return build(SegSettings, cfg.seg, "seg")

    url = "http://pacs:8042/dicom-web"
    check_push_config(seg(), "/in")  # no push: nothing asked of the input
    check_push_config(seg("seg.push=true", "seg.identity=source"), url)
    check_push_config(seg("seg.push=true", "seg.identity=source", "seg.dimse.host=pacs"), "/in")
    cases = {
        ("seg.push=true", "seg.identity=source"): "input must be the DICOMweb URL",
        ("seg.push=true",): "needs seg.identity=source",
        ("seg.push=true", "seg.identity=source", "seg.dimse.host=pacs", "seg.dimse.called_aet=' '"): "called_aet",
    }
    for overrides, needle in cases.items():
        with pytest.raises(UsageError, match=needle):
            check_push_config(seg(*overrides), url if "needs" in needle else "/in")
