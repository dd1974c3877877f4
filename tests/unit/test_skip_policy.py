"""The skip policy (tests/skip_policy.py, registered by tests/conftest.py), run on small throw-away test files in a child pytest:
a skip without an opt-out fails the run, an opt-out is listed, pytest's own exit 5 stays 5."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS = '''
import pytest

def test_plain():
    pass

@pytest.mark.slurm
def test_needs_slurm():
    pass

def test_silent_skip():
    pytest.skip("service not installed")
'''


def run_pytest(tmp_path: Path, *args: str, env_opt_out: str | None = None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_policy_probe.py").write_text(TESTS)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    if env_opt_out is not None:
        env["IMAGING_OPT_OUT"] = env_opt_out
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.skip_policy", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), "-c", "/dev/null", "-q", "-m", "slurm or not slurm",
                           str(tmp_path / "test_policy_probe.py"), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_a_skip_without_opt_out_fails_the_run(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2 passed, 1 skipped" in proc.stdout
    assert "skip policy: 1 test(s) skipped without an opt-out" in proc.stdout
    assert "test_silent_skip: service not installed" in proc.stdout


def test_opt_out_is_listed_and_not_a_failure(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, "--opt-out=slurm", "-k", "not silent")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "opt-out: left out on purpose: slurm (1 test)" in proc.stdout and "skip policy" not in proc.stdout
    env = run_pytest(tmp_path, "-k", "not silent", env_opt_out="slurm")
    assert env.returncode == 0 and "left out on purpose: slurm" in env.stdout


@pytest.mark.parametrize(("args", "code"), [
    (["-k", "no_such_test"], 5),        # nothing collected: pytest's own code, not turned into 1
    (["--opt-out=slrum"], 4),           # a typo opts out of nothing: usage error
])
def test_pytest_exit_codes_are_kept(tmp_path: Path, args: list[str], code: int) -> None:
    proc = run_pytest(tmp_path, *args)
    assert proc.returncode == code, proc.stdout + proc.stderr
