"""Skip policy (registered by tests/conftest.py): nothing skips silently.

A real-service tier is left out only on purpose: ``--opt-out=slurm,orthanc`` (or
``IMAGING_OPT_OUT=slurm,orthanc``) skips the tests carrying those markers, with
the reason ``opted out``, and the summary lists what was left out. Any other
skip (a ``pytest.skip`` in a fixture, an ``importorskip``) makes the run exit 1
with the list of such tests, so CI cannot go green with a tier missing. Pytest's
own exit codes (2 interrupted, 4 usage error, 5 nothing collected) are kept.
"""

from __future__ import annotations

import os

import pytest

# Markers a run may opt out of (declared in pyproject.toml).
TIERS = ("integration", "slurm", "e2e", "slow", "orthanc", "postgres", "browser", "federated")
OPT_OUT_REASON = "opted out"
_opted = pytest.StashKey[dict[str, int]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--opt-out", action="append", default=[], metavar="TIER[,TIER]",
                     help=f"skip these real-service tiers on purpose (markers: {', '.join(TIERS)}); "
                          "also IMAGING_OPT_OUT. Any other skip fails the run.")


def opted_out_tiers(config: pytest.Config) -> list[str]:
    """Tiers left out on purpose, from ``--opt-out`` and ``IMAGING_OPT_OUT``.

    Raises
    ------
    pytest.UsageError
        An unknown tier name (a typo would otherwise opt out of nothing).
    """
    words = [*config.getoption("--opt-out"), os.environ.get("IMAGING_OPT_OUT", "")]
    tiers = [t.strip() for w in words for t in w.split(",") if t.strip()]
    unknown = sorted(set(tiers) - set(TIERS))
    if unknown:
        raise pytest.UsageError(f"--opt-out / IMAGING_OPT_OUT: unknown tier(s) {', '.join(unknown)} "
                                f"(choices: {', '.join(TIERS)})")
    return sorted(set(tiers))


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_opted] = {t: 0 for t in opted_out_tiers(config)}


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: count only what would have run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    opted = config.stash[_opted]
    if not opted:
        return
    for item in items:
        hit = [t for t in opted if item.get_closest_marker(t) is not None]
        if hit:
            for tier in hit:
                opted[tier] += 1
            item.add_marker(pytest.mark.skip(reason=f"{OPT_OUT_REASON} ({', '.join(hit)})"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not reason.startswith(("Skipped: " + OPT_OUT_REASON, OPT_OUT_REASON)):
        _UNEXPECTED.append(f"{report.nodeid}: {reason.removeprefix('Skipped: ')}")


_UNEXPECTED: list[str] = []  # skips without an opt-out, filled by the report hook (which gets no config)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    unexpected = _UNEXPECTED
    # Only turn a green run red: an interrupted run, a usage error or exit 5 (nothing
    # collected, e.g. `-m slurm` on tests/unit) keep pytest's own code.
    if unexpected and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    opted = config.stash[_opted]
    if opted:
        left = ", ".join(f"{t} ({n} test{'s' if n != 1 else ''})" for t, n in opted.items())
        terminalreporter.write_line(f"opt-out: left out on purpose: {left}", yellow=True)
    unexpected = _UNEXPECTED
    if unexpected:
        terminalreporter.write_line(
            f"skip policy: {len(unexpected)} test(s) skipped without an opt-out; a tier that cannot run must "
            "fail, or be left out on purpose with --opt-out=TIER / IMAGING_OPT_OUT (exit 1):", red=True, bold=True)
        for line in unexpected[:50]:
            terminalreporter.write_line(f"  {line}", red=True)
