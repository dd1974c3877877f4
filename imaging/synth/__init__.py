"""Synthetic PACS export: abdomen phantoms as real-looking DICOM, with PHI canaries.

API
---
``generate(output_dir, subjects=2, seed=0, cases="all", size="small", layout="nested",
dicomdir=True, overwrite=False) -> dict`` writes an export and returns its manifest.
The same arguments give byte-identical files (UIDs, dates and noise derive from
``seed``). CLI: ``imaging synth output_dir=... subjects=N seed=S cases=all size=small``.

Benchmark helpers: :func:`write_ct_series` (one big CT series, e.g. 512x512x300) and
:func:`write_many_small_series` (2,000+ small MR files in many series).

Export layout
-------------
``DICOM/ZZDOE001/S0000001/SE000001/IM000001`` (nested: patient/study/series, opaque
DICOM File-ID names) or ``DICOM/IM000001`` (flat); ``DICOMDIR`` (optional);
``labels/<SeriesInstanceUID>.nii.gz`` (ground-truth label maps); ``README.TXT`` and a
``Thumbs.db`` (non-DICOM files); ``manifest.json``. Normal subjects come first
(``ZZDOE001`` .. ``ZZDOE00N``: named after the patient, a canary); the tricky cases live on extra subjects after them.

Cases (``cases="all"`` or a list of these names, see ``imaging.synth.cases.CASES``):
``shuffled_instance_numbers, shuffled_file_names, oblique, gantry_tilt, uneven_spacing,
missing_slice, shared_folder, compressed_rle, compressed_jpegls, compressed_j2k,
localizer, secondary_capture, sr, truncated, missing_geometry, unknown_transfer_syntax,
too_few_slices`` (one CT study of subject N+1), ``position_ffs, position_hfp,
position_ffp, position_hfdl, position_hfdr`` (a subject each), ``enhanced_mr,
dynamic_4d, localizer_3plane`` (one MR study of the next subject).

Each normal subject has a CT study (a labelled portal-venous series with a DICOM
SEG of the ground truth, and a thick reconstruction) and an MR study (T1 and T2
series, both labelled in NIfTI). Labels: 1 liver, 2 spleen, 3 kidney (both).

Manifest schema (``manifest.json``, schema_version 1)
------------------------------------------------------
Top level::

    schema_version, generator, seed, subjects, size, layout, cases: [names],
    labels: {"0": "background", "1": "liver", "2": "spleen", "3": "kidney"},
    label_names: "labels/labels.json" (the same table beside the label files) | null,
    dicomdir: "DICOMDIR" | null,
    non_dicom_files: [relative paths],
    series: [entry, ...],
    canary_token: "ZZPHI",
    canaries: [every PHI string, date and time written, sorted],
    uids: [every instance UID written at any depth (Study, Series, SOP Instance, Frame
        of Reference, Dimension Organization, File-set...), sorted; well-known UIDs
        such as SOP classes excluded],
    n_files: int

Series entry::

    subject: int (1-based), patient_id, study_instance_uid, series_instance_uid,
    series_number, modality ("CT" | "MR" | "SEG" | "OT" | "SR"), sop_class_uid,
    description (plain text; the DICOM SeriesDescription also carries a canary),
    folder, files: [relative paths; volume series: in volume k order, i.e. sorted
        along the slice normal; 4D: timepoint-major, each timepoint sorted],
    flags: [case flags: "shuffled_instance_numbers", "shuffled_file_names", "oblique",
        "oblique:x20y20", "position:<FFS|HFP|FFP|HFDL|HFDR>", "tilt:15", "uneven_spacing",
        "missing_slice", "shared_folder", "compressed", "compressed:<transfer syntax UID>",
        "localizer", "three_plane", "secondary_capture", "sr", "truncated",
        "missing_tag:ImageOrientationPatient", "unknown_transfer_syntax", "ts:<UID>",
        "too_few_slices", "enhanced", "multiframe", "4d", "timepoints:3", "seg",
        "ground_truth"; [] for a plain series],
    expected: {status: "ok" | "skipped" | "error",
               reason_contains: lower-case substring expected in the catalog reason
                   (compare case-insensitively) or null,
               n_volumes: int, shape: [columns, rows, slices] in DICOM raster order
                   (i = column, j = row, k = slice) or null, timepoints: int | null},
    geometry: {position, orientation (IOP, 6), pixel_spacing, slice_thickness, tilt,
               affine_ras (4x4 of the raster-order volume, k sorted along the normal)}
              | null,
    labels: {nifti: "labels/<uid>.nii.gz", seg: relative path | null,
             values: {"1": "liver", ...}} | null,
    references_series: (SEG only) the labelled series' UID,
    bad_files: [files that cannot be fully read: truncated, undecodable pixels] (optional),
    expected_files: {file: expected (as above) for a catalog row of that file alone}
        (optional; e.g. the truncated file: its own error row, while the rest of
        its series is expected "ok" with a missing slice)

The label NIfTI is on the series' own grid: voxel (i, j, k) = column i, row j of the
k-th slice sorted along the normal, with the RAS affine ``geometry.affine_ras``
(sform; qform too unless the grid is sheared by gantry tilt).
"""

from __future__ import annotations

from imaging.synth.bench import write_ct_series, write_many_small_series
from imaging.synth.build import MANIFEST, generate
from imaging.synth.canaries import CANARY_TOKEN

__all__ = ["CANARY_TOKEN", "MANIFEST", "generate", "write_ct_series", "write_many_small_series"]
