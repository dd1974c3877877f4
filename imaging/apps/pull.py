"""`imaging pull url=URL output_dir=EXPORT [study=[UID,...]] [query.modality=CT ...]`.

Thin: compose the config, query and pull with :mod:`imaging.dicomweb.pull`, print
the summary. Exit 1 when a study failed or is incomplete (it is listed with the reason).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

import hydra
from omegaconf import DictConfig

from imaging.resources import CONF_DIR
from imaging.settings import check_command

EXIT_FAILED = 1


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="pull")
def main(cfg: DictConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    from imaging.dicomweb.client import DicomwebError, DicomwebSettings, check_reachable
    from imaging.dicomweb.pull import Puller
    from imaging.dicomweb.qido import PullQuery, as_uid_list, find_studies
    from imaging.errors import UsageError, require_writable_dir
    from imaging.keys import Pseudonymizer, SecretError

    check_command("pull", cfg)  # a bad value: one line naming the key, exit 2, before any work
    require_writable_dir("output_dir", cfg.output_dir)
    settings = DicomwebSettings(str(cfg.url), cfg.dicomweb.auth, float(cfg.dicomweb.timeout_s))
    client = settings.client()
    try:
        check_reachable(client, settings.url)
    except DicomwebError as exc:  # unreachable or refused credentials: nothing was done, exit 2
        raise UsageError(f"url={settings.url}: {exc}") from None
    key: Callable[[str], str] = str
    with contextlib.suppress(SecretError):  # no secret: the UIDs (the export is hospital side)
        key = partial(Pseudonymizer.from_config(cfg.secret_file, bool(cfg.demo_key)).key, kind="study")
    query = PullQuery(str(cfg.query.modality or ""), str(cfg.query.date or ""), str(cfg.query.patient_id or ""))
    studies = as_uid_list(cfg.study) or find_studies(client, query)
    puller = Puller(client, Path(str(cfg.output_dir)), study_key=key, workers=int(cfg.dicomweb.workers),
                    progress=bool(cfg.progress))
    summary = puller.pull(studies, modality=query.modality)
    console = Console()
    table = Table(title=f"imaging pull -> {cfg.output_dir}")
    for col in ("study", "status", "series", "instances", "fetched", "present", "failed", "reason"):
        table.add_column(col)
    for s in summary.studies:
        table.add_row(s.key, s.status, str(s.n_series), str(s.n_instances), str(s.n_fetched), str(s.n_present),
                      str(s.n_failed), s.reason)
    console.print(table)
    console.print(", ".join(f"{k}={v}" for k, v in summary.totals().items()))
    raise SystemExit(EXIT_FAILED if summary.failed else 0)
