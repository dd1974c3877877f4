"""The federation's sbatch scripts (SuperLink job, one SuperNode job per site): byte-identical
to tests/reference/federate_*.sbatch for fixed configs, valid bash, and the flags each
role needs. Regenerate after an intended template change with
``IMAGING_UPDATE_REFERENCE=1 pytest tests/unit/test_launch_federate.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from imaging.launch.federate import (
    EPHEMERAL,
    PORT_BASE,
    PORT_SPAN,
    FederationJob,
    node_config,
    prepare,
    submit,
    superlink_port,
)
from imaging.launch.render import LauncherConfigError

REFERENCE = Path(__file__).resolve().parents[1] / "reference"
PROJECT = Path("/project")
BASE = ["experiment=demo_federated", "paths.root_dir=/project", "federation.sites=[A,B]", "federation.synthetic=null",
        "+federation.datasets.A=/hospital-a/dataset", "+federation.datasets.B=/hospital-b/data set",
        "launcher=slurm", "launcher.time=04:00:00", "launcher.partition=cpu",
        "federation.local_epochs=3"]  # the run dir (r8x3) and its port in the reference scripts
TLS = ["federation.superlink=fl.example.org:9092", "federation.root_certificates=/certs/ca.crt",
       "federation.slurm.insecure=false", "federation.slurm.ssl_certfile=/certs/server.pem",
       "federation.slurm.ssl_keyfile=/certs/server.key", "federation.slurm.ssl_ca_certfile=/certs/ca.crt",
       "federation.slurm.enable_supernode_auth=true", "+federation.slurm.supernode_private_keys.A=/keys/a"]


def _jobs(*extra: str) -> dict[str, FederationJob]:
    _, jobs = prepare([*BASE, *extra], cwd=PROJECT)
    return {job.site or job.role: job for job in jobs}


@pytest.fixture(scope="module")
def plain() -> dict[str, FederationJob]:
    return _jobs()


@pytest.fixture(scope="module")
def tls() -> dict[str, FederationJob]:
    return _jobs(*TLS)


@pytest.mark.parametrize(("name", "key"), [("federate_superlink.sbatch", "superlink"),
                                           ("federate_supernode.sbatch", "B")])
def test_rendered_scripts_match_reference(plain: dict[str, FederationJob], name: str, key: str) -> None:
    text = plain[key].script
    ref = REFERENCE / name
    if os.environ.get("IMAGING_UPDATE_REFERENCE"):
        ref.write_text(text)
    assert ref.is_file(), f"missing {ref}: run with IMAGING_UPDATE_REFERENCE=1 to create it"
    assert text == ref.read_text(), f"{name} differs from {ref} (IMAGING_UPDATE_REFERENCE=1 regenerates it)"


def test_every_script_is_valid_bash(plain: dict[str, FederationJob], tls: dict[str, FederationJob]) -> None:
    for job in [*plain.values(), *tls.values()]:
        proc = subprocess.run(["bash", "-n"], input=job.script, text=True, capture_output=True)
        assert proc.returncode == 0, (job.script_path, proc.stderr)


def _command(script: str, exe: str) -> list[str]:
    """The words of the ``exe`` command in the script (backslash continuations joined)."""
    joined = script.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if ln.lstrip().startswith(exe + " "))
    return shlex.split(line.rstrip(" &"))


def node_config_written(script: str) -> dict[str, str]:
    """The node config the job writes with its quoted heredoc, read back with tomllib."""
    import tomllib

    body = script.split("<<'IMAGING_NODE_CONFIG'\n", 1)[1].split("\nIMAGING_NODE_CONFIG\n", 1)[0]
    return tomllib.loads(body)


def test_one_job_per_site_with_only_its_own_folders(plain: dict[str, FederationJob]) -> None:
    assert sorted(plain) == ["A", "B", "superlink"]
    run_dir = "/project/runs/demo_federated/unet-fedavg-r8x3"
    for site, dataset in (("A", "/hospital-a/dataset"), ("B", "/hospital-b/data set")):
        words = _command(plain[site].script, "flower-supernode")
        cfg = words[words.index("--node-config") + 1]
        assert cfg == f"{run_dir}/sites/{site}/node-config.toml"
        assert node_config_written(plain[site].script) == {"site": site, "dataset-dir": dataset,
                                                           "work-dir": f"{run_dir}/sites/{site}"}
        assert "--insecure" in words and words[words.index("--host") + 1] == "127.0.0.1"
        other = "/hospital-b" if site == "A" else "/hospital-a"
        assert other not in plain[site].script
        assert plain[site].script_path == Path(run_dir, "slurm", f"federate_supernode_{site}.sbatch")
    # The coordinator's job names no site's folder.
    assert "/hospital-" not in plain["superlink"].script


def test_superlink_job_publishes_its_address_and_submits_the_run(plain: dict[str, FederationJob]) -> None:
    text = plain["superlink"].script
    words = _command(text, "flower-superlink")
    assert words[:2] == ["flower-superlink", "--insecure"]
    assert words[words.index("--host") + 1] == "0.0.0.0"
    port = int(re.search(r"^SUPERLINK_PORT=(\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert PORT_BASE <= port < PORT_BASE + PORT_SPAN and port not in EPHEMERAL
    assert 'echo "${ADVERTISE}:${SUPERLINK_PORT}" > "${ADDRESS_FILE}.tmp" && mv' in text
    assert "ADDRESS_FILE=/project/runs/demo_federated/unet-fedavg-r8x3/superlink.address" in text
    run = _command(text, "flwr")
    assert run[:4] == ["flwr", "run", "${FLWR_APP}", "federation"]
    assert run[run.index("--run-config") + 1] == 'config="/project/runs/demo_federated/unet-fedavg-r8x3/federate.yaml"'


def test_tls_and_supernode_auth(tls: dict[str, FederationJob]) -> None:
    link = _command(tls["superlink"].script, "flower-superlink")
    assert "--insecure" not in link and "--enable-supernode-auth" in link
    assert [link[link.index(f) + 1] for f in ("--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile")] == [
        "/certs/server.pem", "/certs/server.key", "/certs/ca.crt"]
    assert link[link.index("--port") + 1] == "${SUPERLINK_PORT}" and "SUPERLINK_PORT=9092" in tls["superlink"].script
    assert "ADVERTISE=fl.example.org" in tls["superlink"].script
    assert 'address = "${ADVERTISE}:${SUPERLINK_PORT}"\nroot-certificates = "/certs/ca.crt"' in tls["superlink"].script
    node_a = _command(tls["A"].script, "flower-supernode")
    assert "--insecure" not in node_a and node_a[node_a.index("--root-certificates") + 1] == "/certs/ca.crt"
    assert node_a[node_a.index("--auth-supernode-private-key") + 1] == "/keys/a"
    assert "--auth-supernode-private-key" not in _command(tls["B"].script, "flower-supernode")
    # The address comes from the config: no waiting for a file.
    assert "SUPERLINK=fl.example.org:9092" in tls["A"].script


def test_supernode_waits_for_the_address_file_with_a_bound(tmp_path: Path, plain: dict[str, FederationJob]) -> None:
    """Run the script's own wait loop for real (sleep shortened): it gives up, naming the file."""
    script = plain["A"].script
    block = script[script.index("FROM_FILE=0"):script.index("# The SuperNode's own Runtime API")]
    block = block.replace("sleep 5", "sleep 0.01")
    env = {"PATH": os.environ["PATH"]}
    prelude = f'SITE=A\nSUPERLINK=""\nADDRESS_FILE={tmp_path}/superlink.address\nADDRESS_TIMEOUT_S=10\n'
    proc = subprocess.run(["bash", "-c", prelude + block], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and f"no {tmp_path}/superlink.address after 10 s" in proc.stdout
    (tmp_path / "superlink.address").write_text("node7:21234\n")
    proc = subprocess.run(["bash", "-c", prelude + block + 'echo "$SUPERLINK $FROM_FILE"'], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == "node7:21234 1"


def test_cross_hospital_sites_without_a_dataset_get_no_job() -> None:
    """With federation.superlink set, sites outside the cluster run their SuperNodes themselves."""
    jobs = _jobs("federation.sites=[A,B,C]", *TLS)
    assert sorted(jobs) == ["A", "B", "superlink"]
    with pytest.raises(LauncherConfigError, match=re.escape("no folder for site(s) ['C']")):
        _jobs("federation.sites=[A,B,C]")


def test_superlink_on_one_interface_is_probed_there() -> None:
    text = _jobs("federation.slurm.host=10.1.2.3")["superlink"].script
    assert '"/dev/tcp/10.1.2.3/${SUPERLINK_PORT}"' in text and 'address = "10.1.2.3:${SUPERLINK_PORT}"' in text


def test_superlink_port_rules() -> None:
    a, b = Path("/runs/x/a"), Path("/runs/x/b")
    assert superlink_port({}, a) == superlink_port({}, a)  # deterministic: same run, same port
    assert superlink_port({}, a) != superlink_port({}, b)
    for d in (Path(f"/runs/{i}") for i in range(200)):
        assert PORT_BASE <= superlink_port({}, d) < PORT_BASE + PORT_SPAN
    assert superlink_port({"superlink": "fl.example.org:9092"}, a) == 9092
    assert superlink_port({"slurm": {"port": 23456}, "superlink": "h:9092"}, a) == 23456
    for bad in (40000, 80, "x"):
        with pytest.raises(LauncherConfigError, match="ephemeral range"):
            superlink_port({"slurm": {"port": bad}}, a)


def test_node_config_quotes_paths() -> None:
    """Paths with quotes, apostrophes, backslashes and newlines come back whole through TOML (tomllib is the oracle)."""
    import tomllib

    hostile = "/d/O'BRIEN^\"THX\"\\x\n, (1957)"
    assert tomllib.loads(node_config("A", hostile, "/w")) == {"site": "A", "dataset-dir": hostile, "work-dir": "/w"}


@pytest.mark.parametrize(("override", "message"), [
    ("federation.sites=[A,B,C]", "no folder for site(s) ['C']"),
    ("federation.slurm.insecure=false", "needs federation.slurm.ssl_certfile"),
    ("federation.slurm.port=50000", "ephemeral range"),
    ("launcher=local", "needs launcher=slurm"),
    ("launcher.time=2h", "launcher.time='2h'"),
])
def test_bad_values_are_named(override: str, message: str) -> None:
    base = [o for o in BASE if not o.startswith("launcher.")] if override == "launcher=local" else BASE
    with pytest.raises(LauncherConfigError, match=re.escape(message)):
        prepare([*base, override], cwd=PROJECT)


def test_submit_dry_run_writes_config_and_scripts(tmp_path: Path) -> None:
    cfg, jobs = prepare([*BASE[:1], f"paths.root_dir={tmp_path}", *BASE[2:]], cwd=tmp_path)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "superlink.address").write_text("stale:1\n")
    ids = submit(cfg, jobs, dry_run=True)
    assert ids == {"superlink": "dry-run", "supernode:A": "dry-run", "supernode:B": "dry-run"}
    assert not (run_dir / "superlink.address").exists()  # no SuperNode may dial a stale address
    server_cfg = (run_dir / "federate.yaml").read_text()
    assert "/hospital-" not in server_cfg  # the ServerApp's config holds no site's folder
    for job in jobs:
        assert job.script_path.read_text() == job.script and os.access(job.script_path, os.X_OK)
