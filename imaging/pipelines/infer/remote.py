"""`imaging infer input=URL`: the DICOMweb side of inference (pull before, push after).

Before the batch: the studies (``study=[...]`` or the ``query``) are pulled into the
private side (``<private_dir>/export``: real UIDs never reach the output folder),
then ingested as any PACS export. After it: each series' SEG (``seg.identity=source``,
the only identity the archive can attach to its study) is stored back by STOW-RS,
unless the archive already has it. Pull and push outcomes are rows of
``OUT/transfers.shard-I-of-N.csv``, named by study or series key, never by UID.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from imaging.dicomweb.client import DicomwebError, DicomwebSettings, check_reachable
from imaging.dicomweb.pull import Puller
from imaging.dicomweb.push import PushResult, c_store, stow
from imaging.dicomweb.qido import PullQuery, as_uid_list, find_studies
from imaging.errors import UsageError
from imaging.fsutil import atomic_write_text
from imaging.keys import Pseudonymizer
from imaging.settings.inference import SegSettings

log = logging.getLogger(__name__)


@dataclass
class TransferRow:
    """One study pulled or one SEG pushed: ``status`` ok | present | incomplete | error, with why.

    ``incomplete``: the archive counts more instances than it served (the study stays out).
    """

    key: str  # study key (pull) or series key (push)
    stage: str  # pull | push
    status: str
    reason: str = ""
    n_instances: int = 0
    n_fetched: int = 0

    @property
    def failed(self) -> bool:
        """Counts as a failure of the shard (``fail_on_error``): not transferred, or only in part."""
        return self.status in ("error", "incomplete")


def is_url(value: object) -> bool:
    return str(value).startswith(("http://", "https://"))


def settings_from_config(cfg: DictConfig) -> DicomwebSettings:
    auth = OmegaConf.to_container(cfg.dicomweb.auth, resolve=True) if "dicomweb" in cfg else None
    timeout = float(cfg.dicomweb.get("timeout_s", 60)) if "dicomweb" in cfg else 60.0
    return DicomwebSettings(str(cfg.input), auth, timeout)  # type: ignore[arg-type]


def check_push_config(seg: SegSettings, source: str) -> None:
    """``seg.push`` needs a DICOMweb input (``source``, infer's ``input``) and the source identity.

    Args:
        seg: the checked ``seg`` settings (``imaging.settings.build(SegSettings, cfg.seg, "seg")``).

    Raises:
        UsageError: names the key that is wrong.
    """
    if not seg.push:
        return
    dimse = seg.dimse
    if dimse.host:
        if not str(dimse.called_aet or "").strip():
            raise UsageError("seg.dimse.called_aet: the archive's AE title is needed for C-STORE")
        if not 0 < dimse.port < 65536:  # also a settings range; kept for a hand-built SegSettings
            raise UsageError(f"seg.dimse.port={dimse.port}: a TCP port (1-65535)")
    elif not is_url(source):
        raise UsageError("seg.push=true: input must be the DICOMweb URL the SEGs go back to "
                         "(or set seg.dimse.host for DIMSE C-STORE)")
    if seg.identity != "source":
        raise UsageError("seg.push=true needs seg.identity=source (a de-identified SEG cannot attach to the "
                         "archive's study)")


def pull_for_inference(cfg: DictConfig, private: Path, pseudo: Pseudonymizer, modality: str,
                       progress: bool = True) -> tuple[Path, list[TransferRow]]:
    """Pull the studies to run on into ``<private>/export``; returns (export, one row per study).

    Raises:
        UsageError: the server is unreachable or refuses the credentials (nothing was done).
    """
    settings = settings_from_config(cfg)
    client = settings.client()
    try:
        check_reachable(client, settings.url)
    except DicomwebError as exc:
        raise UsageError(f"input={settings.url}: {exc}") from None
    q = cfg.get("query") or {}
    query = PullQuery(str(q.get("modality") or modality), str(q.get("date") or ""), str(q.get("patient_id") or ""))
    studies = as_uid_list(cfg.get("study")) or find_studies(client, query)
    export = private / "export"
    export.mkdir(parents=True, exist_ok=True)
    workers = int(cfg.dicomweb.get("workers", 4)) if "dicomweb" in cfg else 4
    puller = Puller(client, export, study_key=lambda uid: pseudo.key(uid, "study"), workers=workers,
                    progress=progress)
    summary = puller.pull(studies, modality=query.modality)
    rows = [TransferRow(s.key, "pull", s.status, s.reason, s.n_instances, s.n_fetched) for s in summary.studies]
    log.info("pulled %d studies (%d failed)", len(summary.ok), len(summary.failed))
    return export, rows


def push_segs(cfg: DictConfig, out: Path, keys: Iterable[str]) -> list[TransferRow]:
    """Store every ``OUT/<key>/seg.dcm`` of a done series: STOW-RS (the archive is asked first,
    no duplicates), or DIMSE C-STORE when ``seg.dimse.host`` is set."""
    dimse = cfg.seg.get("dimse") or {}
    if dimse.get("host"):
        def store(path: Path, what: str) -> PushResult:
            return c_store(path, str(dimse["host"]), int(dimse["port"]), str(dimse["called_aet"]),
                           str(dimse.get("calling_aet") or "IMAGING"), what=what)
    else:
        client = settings_from_config(cfg).client()

        def store(path: Path, what: str) -> PushResult:
            return stow(client, path, what)
    rows = []
    for key in keys:
        seg = out / key / "seg.dcm"
        if not (out / "done" / f"{key}.json").is_file() or not seg.is_file():
            continue
        result = store(seg, f"series {key}")
        if result.status == "error":
            log.warning("%s", result.reason)
        rows.append(TransferRow(key, "push", "ok" if result.status == "stored" else result.status, result.reason))
    return rows


def write_transfers(out: Path, rows: list[TransferRow], shard: str) -> Path:
    """``OUT/transfers.shard-I-of-N.csv`` (``shard`` "I/N") or ``OUT/transfers.<shard>.csv``, and ``.json``, atomically."""
    path = out / (f"transfers.shard-{shard.replace('/', '-of-')}.csv" if "/" in shard else f"transfers.{shard}.csv")
    buf = io.StringIO()
    fields = list(TransferRow.__dataclass_fields__)
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow(asdict(row))
    atomic_write_text(path, buf.getvalue())
    atomic_write_text(path.with_suffix(".json"), json.dumps([asdict(r) for r in rows], indent=1))
    return path


def read_transfers(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
