"""Typed settings of ingest: the shared ``ingest_options`` group (at the top level of ``imaging
ingest`` and ``imaging infer``) and ``imaging ingest``'s own keys."""

from __future__ import annotations

from dataclasses import dataclass

from imaging.settings.check import setting


@dataclass(frozen=True)
class IngestOptions:
    """How an export becomes volumes (``imaging/conf/ingest_options/default.yaml``)."""

    tilt: str = setting("resample", choices=("resample", "refuse"))
    uneven: str = setting("refuse", choices=("refuse", "resample", "keep"))
    philips_precise: bool = setting(False)
    split_4d: bool = setting(False)
    keep_patient_characteristics: bool = setting(False)


@dataclass
class IngestCommand:
    """The top-level keys of ``imaging ingest`` (``input_dir``/``output_dir``: checked by the app as paths)."""

    input_dir: str = setting("")
    output_dir: str = setting("")
    private_dir: str | None = setting(None)
    labels_dir: str | None = setting(None)
    secret_file: str | None = setting(None)
    demo_key: bool = setting(False)
    workers: int = setting(2, min=1)
    fail_on_error: bool = setting(True)
    progress: bool = setting(True)
