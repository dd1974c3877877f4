"""Ingest a batch of series (one at a time): plan, assemble, write volume + sidecar + labels + sources.

Runs in the main process or in worker processes (:func:`process_batch` takes only
picklable arguments and opens the index itself). Label integers must agree across
workers, so workers get a frozen :class:`LabelTable`; a series whose ground truth
brings a name nobody registered is handed back (``deferred``) and redone in the
main process, which may add names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from imaging.boundary import failure_reason, record_private
from imaging.deid.values import cap_age
from imaging.deid.withhold import Withheld, WithholdPolicy, check, read_policy_header
from imaging.dicom.catalog import CatalogRow
from imaging.dicom.diffusion import diffusion_table, write_fsl
from imaging.dicom.dims import TIME_AXES
from imaging.dicom.geometry import Grid, PlanError, Slice, plan_grid, slice_normal, sparse_grid
from imaging.dicom.header import POLICY_TAGS
from imaging.dicom.index_row import IndexRow, image_size, slice_row
from imaging.dicom.labels import (
    LABELMAP,
    LabelError,
    Labels,
    LabelTable,
    LabelTableFrozen,
    nifti_to_labels,
)
from imaging.dicom.scan import decode_row
from imaging.dicom.seg_labels import SEG_LABELS_VERSION, seg_to_labels, segs_to_labels
from imaging.dicom.series import SEG_CLASSES, SeriesPlan, VolumePlan, plan_series
from imaging.dicom.sidecar import axis_codes, build_sidecar
from imaging.dicom.volume import VolumeError, assemble, write_nifti
from imaging.fsutil import atomic_write_json, atomic_write_text
from imaging.keys import FileNames, Pseudonymizer, subject_identity

log = logging.getLogger(__name__)


@dataclass
class SeriesContext:
    """Everything a (worker) process needs to ingest series; picklable."""

    input_dir: Path
    output_dir: Path
    private_dir: Path
    ps: Pseudonymizer
    options: dict[str, Any]
    labels_dir: Path | None
    label_names: dict[int, str]
    table: LabelTable
    segs: dict[str, list[IndexRow]]  # referenced series -> its SEGs' rows (path, size, mtime... only)
    keep_patient_characteristics: bool
    withhold: WithholdPolicy = field(default_factory=WithholdPolicy)
    keep_age_90_plus: bool = False


@dataclass
class BatchResult:
    rows: list[CatalogRow] = field(default_factory=list)
    links: set[tuple[str, str, str]] = field(default_factory=set)
    n_written: int = 0
    n_reused: int = 0
    label_errors: int = 0
    deferred: list[str] = field(default_factory=list)
    names: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> path/UID (private)

    def merge(self, other: BatchResult) -> None:
        self.names.update(other.names)
        self.rows += other.rows
        self.links |= other.links
        self.n_written += other.n_written
        self.n_reused += other.n_reused
        self.label_errors += other.label_errors
        self.deferred += other.deferred


def process_batch(uids: list[str], ctx: SeriesContext) -> BatchResult:
    """Ingest the series ``uids`` (index rows read one series at a time)."""
    result = BatchResult()
    names = FileNames(ctx.ps, ctx.input_dir)  # reasons are composed with keys; names.jsonl maps them back
    con = sqlite3.connect(f"file:{ctx.private_dir / 'index.sqlite'}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        for uid in uids:
            rows = [decode_row(r) for r in
                    con.execute("SELECT * FROM files WHERE kind='dicom' AND series_uid=?", (uid,))]
            if not rows:
                continue
            ref = rows[0].get("ref_series_uid")
            orphan = rows[0].get("sop_class") in SEG_CLASSES and not (ref and con.execute(
                "SELECT 1 FROM files WHERE kind='dicom' AND series_uid=? LIMIT 1", (ref,)).fetchone())
            try:
                result.rows.extend(_ingest_series(rows, ctx, result, names, orphan_seg=orphan))
            except LabelTableFrozen:
                result.deferred.append(uid)
            except Exception as exc:  # noqa: BLE001 - one series never stops the export
                # A library's text names absolute paths: the boundary keeps it on the private side.
                key = ctx.ps.key(uid, "series")
                reason = failure_reason(exc, stage="internal error", where=key, private_dir=ctx.private_dir)
                log.error("series %s failed unexpectedly: %s", key, type(exc).__name__)
                first = rows[0]
                result.rows.append(CatalogRow(
                    key,
                    ctx.ps.key(subject_identity(first.get("patient_id") or "", "", first.get("study_uid") or "")[0],
                               "subject"),
                    ctx.ps.key(first.get("study_uid") or "", "study"), first.get("modality") or "", "error",
                    reason))
    finally:
        con.close()
    result.names.update(names.found)
    return result


def _ingest_series(rows: list[IndexRow], ctx: SeriesContext, result: BatchResult, names: FileNames, *,
                   orphan_seg: bool = False) -> list[CatalogRow]:
    o = ctx.options
    plan = plan_series(rows, names.file_key, tilt=o["tilt"], uneven=o["uneven"], split_4d=o["split_4d"],
                       philips_precise=o.get("philips_precise", False))
    head = read_policy_header(rows[0]["path"])
    identity, per_study = subject_identity(plan.patient_id, str(head.get("IssuerOfPatientID") or ""), plan.study_uid)
    subject = ctx.ps.key(identity, "subject")
    study = ctx.ps.key(plan.study_uid, "study")
    base = ctx.ps.key(plan.series_uid, "series")
    result.links.update({("subject", plan.patient_id, subject), ("study", plan.study_uid, study),
                         ("series", plan.series_uid, base)})
    common: dict[str, Any] = {"subject_key": subject, "study_key": study, "modality": plan.modality, "sop_class": plan.sop_class,
              "series_number": str(plan.params.get("SeriesNumber", "")),
              "body_part": str(plan.params.get("BodyPartExamined", ""))}
    if plan.kind == "seg" and orphan_seg:
        return _write_orphan_seg(plan, base, ctx, result, common, names)
    if plan.kind == "seg":
        ref = rows[0].get("ref_series_uid")
        target = f" of series {ctx.ps.key(ref, 'series')}" if ref else " (no (0008,1115) ReferencedSeriesSequence)"
        return [CatalogRow(base, status="skipped", reason=plan.reason + target, n_instances=plan.n_instances, **common)]
    if per_study:
        log.warning("series %s: empty (0010,0020) PatientID; its study becomes its own subject", base)
    if plan.kind != "seg" and (withheld := _withheld(rows, head, ctx)) is not None:
        return [CatalogRow(base, status="skipped", reason=str(withheld), n_instances=plan.n_instances, **common)]
    if plan.kind in ("skipped", "error"):
        log.debug("series %s: %s", base, plan.kind)
        return [CatalogRow(base, status=plan.kind, reason=plan.reason, n_instances=plan.n_instances, **common)]
    out = []
    for n, vol in enumerate(plan.volumes, start=1):
        key = base if len(plan.volumes) == 1 else f"{base}_{n}"
        if key != base:
            result.links.add(("volume", plan.series_uid, key))
        out.append(_write_volume(plan, vol, key, ctx, result, common, names))
    if plan.reason:  # stacks of this series refused while others were written
        out.append(CatalogRow(f"{base}_refused", status="error", reason=plan.reason,
                              n_instances=plan.n_instances, **common))
    return out


def _withheld(rows: list[IndexRow], head: dict[str, Any], ctx: SeriesContext) -> Withheld | None:
    """The withholding rule (the one policy ``imaging deid`` applies) that refuses this series.

    Every instance is checked with its own attributes: the index holds each file's SOP
    class, modality, ImageType and the policy flags (BurnedInAnnotation,
    RecognizableVisualFeatures, SeriesDescription), so one instance with burned-in
    text withholds the whole series, as ``imaging deid`` withholds that instance.
    ``head`` (the first file) answers only for an index written before the flags were.
    """
    verdicts: dict[tuple[Any, ...], Withheld | None] = {}  # most series: one signature
    hits: list[Withheld] = []
    base = {k: v for k, v in head.items() if k not in POLICY_TAGS}  # the first file's flags are its own
    for r in rows:
        image_type = tuple(r.get("image_type") or ())
        policy = r.get("policy")
        flags = policy if policy is not None else {k: head[k] for k in POLICY_TAGS if k in head}
        sig = (r.get("sop_class"), r.get("modality"), image_type, tuple(sorted(flags.items())))
        if sig not in verdicts:
            verdicts[sig] = check({**base, **flags, "SOPClassUID": r.get("sop_class") or "",
                                   "Modality": r.get("modality") or "", "ImageType": list(image_type)}, ctx.withhold)
        if (found := verdicts[sig]) is not None:
            hits.append(found)
    if not hits:
        return None
    if len(hits) == len(rows):
        return hits[0]
    return Withheld(hits[0].rule, f"{hits[0].detail}; {len(hits)} of {len(rows)} instance(s) of the series")


def _fingerprint(vol: VolumePlan, segs: list[IndexRow], label_file: Path | None, options: dict[str, Any]) -> str:
    files = sorted({(s.path, s.row["size"], s.row["mtime"]) for st in vol.slices for s in st})
    extra: list[Any] = [(r["path"], r["size"], r["mtime"]) for r in segs]
    if segs:
        extra.append(("seg-labels", SEG_LABELS_VERSION))
    if label_file is not None:
        st = label_file.stat()
        extra.append((str(label_file), st.st_size, st.st_mtime))
    blob = json.dumps([files, extra, options], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_volume(plan: SeriesPlan, vol: VolumePlan, key: str, ctx: SeriesContext,
                  result: BatchResult, common: dict[str, Any], names: FileNames) -> CatalogRow:
    # One SeriesInstanceUID under several SeriesNumbers is one volume each: each row its own number.
    number = (vol.slices[0][0].row.get("params") or {}).get("SeriesNumber")
    common = {**common, "series_number": str(number)} if number is not None else common
    segs = ctx.segs.get(plan.series_uid, [])
    label_file = ctx.labels_dir / f"{plan.series_uid}.nii.gz" if ctx.labels_dir else None
    if label_file is not None and not label_file.is_file():
        label_file = None
    fp = _fingerprint(vol, segs, label_file, ctx.options)
    src_json = ctx.private_dir / "sources" / f"{key}.json"
    vol_rel, lab_rel = f"volumes/{key}.nii.gz", f"labels/{key}.nii.gz"
    previous = _read_json(src_json)
    vol_path = ctx.output_dir / vol_rel
    # Size check too: files are synced once per run, so a crash may leave an empty volume.
    if previous.get("fingerprint") == fp and previous.get("catalog_row") and vol_path.is_file() \
            and vol_path.stat().st_size == previous.get("volume_bytes"):
        result.n_reused += 1
        return CatalogRow(**previous["catalog_row"])
    try:
        data = assemble(vol, names.file_key)
    except VolumeError as exc:
        if exc.__cause__ is not None:  # a decoder's text (paths) stays private; ours names keys only
            record_private(ctx.private_dir, stage="pixels", where=key, exc=exc)
        return CatalogRow(key, status="error", reason=str(exc), n_instances=vol.n_instances, **common)
    reason = "; ".join(vol.remarks)
    labels = None
    try:
        labels = _labels(plan, vol, segs, label_file, ctx, names)
    except LabelError as exc:
        if exc.__cause__ is not None:  # a library's text (paths) stays private; ours names keys only
            record_private(ctx.private_dir, stage="labels", where=key, exc=exc)
        result.label_errors += 1
        reason = "; ".join(filter(None, [reason, f"labels not written: {exc}"]))
    write_nifti(data, vol.grid, vol_path, tr_s=_tr_seconds(vol), fsync=False)
    table = diffusion_table(vol)
    if table is not None:
        write_fsl(vol_path, *table, vol.grid.affine_ras)
    sidecar = build_sidecar(plan, vol, data.shape, keep_patient_characteristics=ctx.keep_patient_characteristics)
    if sidecar.get("PatientAge") and not ctx.keep_age_90_plus:
        sidecar["PatientAge"] = cap_age(str(sidecar["PatientAge"]))
    atomic_write_json(ctx.output_dir / f"volumes/{key}.json", sidecar, fsync=False)
    if labels is not None:
        write_nifti(labels.data, vol.grid, ctx.output_dir / lab_rel, fsync=False)
    grid = vol.grid
    row = CatalogRow(
        key, status="ok", reason=reason, n_instances=vol.n_instances, shape="x".join(map(str, data.shape)),
        spacing="x".join(f"{v:.6g}" for v in (grid.dx, grid.dy, grid.dz)), orientation=axis_codes(grid.affine_ras),
        volume_path=vol_rel, label_path=lab_rel if labels is not None else "", n_timepoints=len(vol.slices),
        label_layout=labels.layout if labels is not None else "",
        tilt_deg=grid.tilt_deg, slice_spacing_uneven=grid.uneven, **common,
    )
    files: list[str] = []
    index: dict[str, int] = {}
    frames = []
    for st in vol.slices:
        for s in st:
            if s.path not in index:
                index[s.path] = len(files)
                files.append(s.path)
            frames.append([index[s.path], s.frame + 1])
    # Compact JSON (C encoder): machine-read, one per volume.
    atomic_write_text(src_json, json.dumps({
        "files": files, "frames": frames, "series_instance_uid": plan.series_uid,
        "study_instance_uid": plan.study_uid, "n_slices": len(vol.slices[0]), "n_timepoints": len(vol.slices),
        "resampled": grid.resampled, "fingerprint": fp, "volume_bytes": vol_path.stat().st_size,
        "catalog_row": asdict(row),
    }, separators=(",", ":")), fsync=False)
    result.n_written += 1
    log.debug("series %s: ok %s", key, row.shape)
    return row


def _write_orphan_seg(plan: SeriesPlan, key: str, ctx: SeriesContext, result: BatchResult,
                      common: dict[str, Any], names: FileNames) -> list[CatalogRow]:
    """A DICOM SEG series whose source series is not in the export: each instance its own label volume.

    Instances of one SEG series may differ in frame size and position (one segmentation
    stored several ways): each gets its own grid and row (``<key>_<n>`` in file order when
    there are several), so none is dropped; an instance that cannot be rasterised is an
    error row naming its file.
    """
    rows = sorted(plan.rows, key=lambda r: r["path"])
    ref = rows[0].get("ref_series_uid")
    what = (f"DICOM SEG whose source series {ctx.ps.key(ref, 'series')} is not in the export" if ref
            else "DICOM SEG without (0008,1115) ReferencedSeriesSequence")
    out = []
    for n, seg in enumerate(rows, start=1):
        inst_key = key if len(rows) == 1 else f"{key}_{n}"
        if inst_key != key:
            result.links.add(("volume", plan.series_uid, inst_key))
        out.append(_write_orphan_instance(seg, inst_key, what, ctx, result, common, names))
    return out


def _write_orphan_instance(seg: IndexRow, key: str, what: str, ctx: SeriesContext, result: BatchResult,
                           common: dict[str, Any], names: FileNames) -> CatalogRow:
    """One SEG instance's labels on its own frame grid.

    The grid comes from the SEG's frames (PlanePositionSequence, orientation, PixelSpacing,
    Rows/Columns) like an image series' grid from its slices; frames at the same position
    (one per segment) are one slice, and positions the SEG has no frame for are empty slices.
    """
    ref = names.file_key(seg["path"])
    slices = []
    for i, f in enumerate(seg.get("frames") or []):
        ipp, iop, sp = f.get("ipp"), f.get("iop"), f.get("sp")
        if ipp is None or iop is None or sp is None:
            return CatalogRow(key, status="error", n_instances=1, **common, reason=(
                f"{what}: file {ref} frame {i + 1}: missing (0020,0032)/(0020,0037)/(0028,0030) "
                "in functional groups"))
        # (lengths unchecked here, as before: plan_grid and the label rasteriser meet a wrong one)
        slices.append(Slice(path=seg["path"], frame=i, ipp=cast("tuple[float, float, float]", tuple(ipp)),
                            iop=tuple(iop), spacing=cast("tuple[float, float]", tuple(sp)), t={}, slope=1.0,
                            intercept=0.0, sop_uid=f"{i}", row=slice_row(seg)))
    try:
        if not slices:
            raise PlanError("no frames with (5200,9230) PerFrameFunctionalGroupsSequence geometry")
        # Frames only where a segment is: the gaps are empty slices, never interpolated data.
        grid = _one_position_grid(seg, slices) or sparse_grid(
            plan_grid([slices], tilt=ctx.options["tilt"], uneven="resample")[0])
        labels = seg_to_labels(seg["path"], grid, ctx.table, ref)
    except (PlanError, LabelError) as exc:
        return CatalogRow(key, status="error", reason=f"{what}: file {ref}: {exc}", n_instances=1, **common)
    lab_rel = f"labels/{key}.nii.gz"
    write_nifti(labels.data, grid, ctx.output_dir / lab_rel, fsync=False)
    result.n_written += 1
    return CatalogRow(
        key, status="ok", n_instances=1, shape="x".join(map(str, labels.data.shape)),
        reason=f"{what}: file {ref}: label volume in the SEG's own frame geometry (no image volume)",
        spacing="x".join(f"{v:.6g}" for v in (grid.dx, grid.dy, grid.dz)), orientation=axis_codes(grid.affine_ras),
        label_path=lab_rel, label_layout=labels.layout, tilt_deg=grid.tilt_deg, **common,
    )


def _one_position_grid(seg: IndexRow, slices: list[Slice]) -> Grid | None:
    """The grid of a SEG whose frames all lie on one plane (one annotated slice), else None.

    Two positions give the planner a slice spacing; one gives none, so the frame's
    (0018,0050) SliceThickness is the one slice's extent.
    """
    ipps = np.asarray([s.ipp for s in slices], float)
    thickness = (seg.get("frames") or [{}])[0].get("thk")
    if not np.allclose(ipps, ipps[0], atol=1e-3) or not isinstance(thickness, (int, float)) or thickness <= 0:
        return None
    first = slices[0]
    ny, nx = image_size(seg)
    r, c, n = slice_normal(first.iop)
    d = np.array([float(np.dot(ipps[0], n))])
    return Grid(row_dir=r, col_dir=c, normal=n, dx=float(first.spacing[1]), dy=float(first.spacing[0]),
                nx=nx, ny=ny, origin=ipps[0], src_d=d, offsets=np.zeros((1, 2)),
                dz=float(thickness), out_d=d)


def _labels(plan: SeriesPlan, vol: VolumePlan, segs: list[IndexRow], label_file: Path | None,
            ctx: SeriesContext, names: FileNames) -> Labels | None:
    if segs:
        # Every SEG instance of this series whole in one label volume, or a LabelError naming it.
        return segs_to_labels([(r["path"], names.file_key(r["path"])) for r in segs],
                              vol.grid, ctx.table)
    if label_file is not None:
        return Labels(nifti_to_labels(label_file, vol.grid, ctx.table, ctx.label_names), LABELMAP)
    return None


def _tr_seconds(vol: VolumePlan) -> float | None:
    """pixdim[4]: the volume's own TR when its 4th axis is time, 1 for other axes (b-value, phase...)."""
    if vol.t_key is not None and vol.t_key not in TIME_AXES:
        return 1.0
    tr = (vol.slices[0][0].row.get("params") or {}).get("RepetitionTime")
    return float(tr) / 1000.0 if isinstance(tr, (int, float)) else None
