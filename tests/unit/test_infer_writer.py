"""The writer processes of a batch: outputs written off the model's process, a crash isolated."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from imaging.pipelines.infer.writers import SegSettings, WriteJob, WriterPool


class _DiesOnUnpickle:
    """Unpickling this in the writer process ends that process at once (a decoder crash)."""

    def __reduce__(self):
        return (os._exit, (3,))


def _job(tmp_path: Path, name: str, names: object = None) -> WriteJob:
    volume = tmp_path / "vol.nii.gz"
    if not volume.exists():
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.diag([2.0, 2.0, 3.0, 1.0])), volume)
    labels = np.zeros((8, 8, 4), np.uint8)
    labels[2:5, 2:5, 1:3] = 1
    return WriteJob(name, tmp_path / name, volume, labels, np.diag([2.0, 2.0, 3.0, 1.0]),
                    names if names is not None else {1: "liver"}, None, SegSettings(enabled=False), True,
                    (-100.0, 100.0), name, "unet", "1", None)


def test_a_writer_process_crash_fails_only_its_series(tmp_path: Path) -> None:
    pool = WriterPool(1)
    jobs = [_job(tmp_path, "a"), _job(tmp_path, "bad", names=_DiesOnUnpickle()), _job(tmp_path, "c")]
    try:
        pool.start()
        futures = [pool.submit(j) for j in jobs]
        outcomes = [pool.result(f, j) for f, j in zip(futures, jobs, strict=True)]
        again = pool.result(pool.submit(jobs[0]), jobs[0])  # the pool was rebuilt: it still writes
    finally:
        pool.close()
    assert outcomes[0].error == "" and outcomes[2].error == "" and again.error == ""
    assert outcomes[1].error.startswith("write: the writer process died twice")
    for name in ("a", "c"):
        assert (tmp_path / name / "seg.nii.gz").is_file() and (tmp_path / name / "overlay.png").is_file()
        written = nib.load(str(tmp_path / name / "seg.nii.gz"))
        assert np.array_equal(np.asarray(written.dataobj), jobs[0].labels)
        assert np.allclose(written.affine, jobs[0].affine)
    assert not (tmp_path / "bad").exists()
    assert outcomes[0].files == ["seg.nii.gz", "overlay.png"] and outcomes[0].seconds > 0


def test_an_error_in_the_writer_is_the_series_reason(tmp_path: Path) -> None:
    job = _job(tmp_path, "x")
    job.volume_path = tmp_path / "missing.nii.gz"
    pool = WriterPool(1)
    try:
        outcome = pool.result(pool.submit(job), job)
    finally:
        pool.close()
    assert outcome.error.startswith("nifti: FileNotFoundError") and outcome.files == []
    assert str(tmp_path) not in outcome.error  # the path is in the private errors.jsonl only
