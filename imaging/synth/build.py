"""`generate()`: normal subjects, tricky cases, non-DICOM files, DICOMDIR, manifest."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from imaging.fsutil import atomic_write_json, atomic_write_text
from imaging.synth import phantom as ph
from imaging.synth.canaries import CANARY_TOKEN
from imaging.synth.dicomdir import write_dicomdir
from imaging.synth.export import SIZES, Export, Subject, grid_for, volume_series
from imaging.synth.writer import make_uid

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
# What generate() may remove when asked to overwrite: only what it writes itself.
_OWN_OUTPUTS = ("DICOM", "labels", "DICOMDIR", MANIFEST, "README.TXT")


def normal_subject(export: Export, subject: Subject) -> None:
    """A plain subject: CT study (labelled PV series + SEG, thick recon) and MR study (T1, T2)."""
    n, pixel, slices, step = SIZES[export.size]["CT"]
    ct = grid_for(export, subject, "CT")
    volume_series(export, subject, "CT", "CT", "CT", f"CT ABDOMEN PV {step:.1f}", ct, labels=True, seg=True)
    thick = grid_for(export, subject, "CT", n_slices=slices // 2, step=step * 2)
    volume_series(export, subject, "CT", "CT", "CT", f"CT ABDOMEN PV {2 * step:.1f}", thick)
    mr = grid_for(export, subject, "MR")
    volume_series(export, subject, "MR", "MR", "T1", "MR AX T1 SE", mr, labels=True)
    volume_series(export, subject, "MR", "MR", "T2", "MR AX T2 TSE", mr, labels=True)


def _request(seed: int, subjects: int, cases: list[str], size: str, layout: str, dicomdir: bool) -> dict[str, Any]:
    """The manifest fields that identify what was asked for."""
    return {"schema_version": SCHEMA_VERSION, "generator": "imaging.synth", "seed": seed, "subjects": subjects,
            "size": size, "layout": layout, "cases": cases, "dicomdir": "DICOMDIR" if dicomdir else None}


def _existing(root: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of a complete export of the same request in ``root``, if there is one."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    same = isinstance(manifest, dict) and all(manifest.get(k) == v for k, v in request.items())
    return manifest if same else None


def _prepare(root: Path, overwrite: bool) -> None:
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output_dir '{root}' is not empty (pass overwrite=True to replace an export)")
        for name in _OWN_OUTPUTS:
            target = root / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _non_dicom(export: Export) -> list[str]:
    """A README at the root and a Thumbs.db deep in the tree, as real exports have."""
    readme = "README.TXT"
    atomic_write_text(export.root / readme, "Exported by a PACS viewer. Open DICOMDIR to browse.\n")
    nested = export.layout != "flat" and export.subjects
    thumbs = f"DICOM/{export.subjects[0].patient_dir}/Thumbs.db" if nested else "DICOM/Thumbs.db"
    (export.root / thumbs).parent.mkdir(parents=True, exist_ok=True)
    (export.root / thumbs).write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504))
    return [readme, thumbs]


def generate(
    output_dir: str | Path,
    subjects: int = 2,
    seed: int = 0,
    cases: str | Sequence[str] = "all",
    size: str = "small",
    layout: str = "nested",
    dicomdir: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a synthetic PACS export and return its manifest (also ``<out>/manifest.json``).

    Args:
        output_dir: export root (created; must be empty unless ``overwrite``).
        subjects: number of normal subjects (tricky cases add their own subjects).
        seed: everything (anatomy, noise, UIDs, dates) derives from it.
        cases: "all", "none", or a list of case names (see :data:`imaging.synth.cases.CASES`).
        size: "small" (training in minutes on a CPU) or "full".
        layout: "nested" (``DICOM/P.../S.../SE.../IM...``) or "flat" (``DICOM/IM...``).
        dicomdir: also write a DICOMDIR indexing every readable DICOM file.
        overwrite: replace a previous export in ``output_dir`` (only files this
            function writes are removed). Without it, a complete export of the same
            arguments is reused as it is (its manifest returned).

    Files are written in place; ``manifest.json`` is written last and atomically,
    so its presence marks a complete export.

    Raises:
        ValueError: unknown size, layout or case name.
        FileExistsError: ``output_dir`` is not empty, holds no complete export of the
            same arguments, and ``overwrite`` is False.
    """
    from imaging.synth.cases import resolve_cases, run_cases

    case_names = resolve_cases(cases)
    if subjects < 0:
        raise ValueError(f"subjects must be >= 0, got {subjects}")
    root = Path(output_dir)
    export = Export(root, int(seed), size, layout)
    request = _request(int(seed), subjects, case_names, size, layout, dicomdir)
    # The manifest is written last, so its presence marks a complete export: re-running
    # the same request (a demo resumed) reuses it instead of failing or rewriting.
    if not overwrite and (previous := _existing(root, request)) is not None:
        log.info("synthetic export already complete in %s (same arguments): reused", root)
        return previous
    _prepare(root, overwrite)
    for index in tqdm(range(1, subjects + 1), desc="synth subjects", disable=subjects < 4):
        normal_subject(export, export.subject(index))
    run_cases(export, case_names, first_subject=subjects + 1)
    non_dicom = _non_dicom(export)
    label_names = None
    if any(s["labels"] for s in export.series):
        # Names of the integer values in labels/*.nii.gz, where readers look for them.
        label_names = "labels/labels.json"
        atomic_write_json(root / label_names, {"labels": {str(k): v for k, v in ph.LABELS.items()}})
    if dicomdir:
        fileset_uid = make_uid(export.seed, "fileset", subjects, ",".join(case_names))
        export.uids.add(fileset_uid)
        write_dicomdir(root, export.dicom_files, fileset_uid, on_header=export.note_uids)
    else:
        export.collect_uids(export.dicom_files)
    manifest = {
        **request,
        "labels": {str(k): v for k, v in ph.LABELS.items()},
        "label_names": label_names,
        "non_dicom_files": non_dicom,
        "series": export.series,
        "canary_token": CANARY_TOKEN,
        "canaries": export.all_canaries(),
        "uids": sorted(export.uids),
        "n_files": len(export.dicom_files) + len(export.other_files),
    }
    atomic_write_json(root / MANIFEST, manifest)
    log.info("synthetic export: %d series, %d files in %s", len(export.series), manifest["n_files"], root)
    return manifest
