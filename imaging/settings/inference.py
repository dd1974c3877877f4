"""Typed settings of ``imaging infer``: the ``inference`` group and the command's own keys.

Choices and ranges are those the YAML comments of ``imaging/conf/infer.yaml`` and
``imaging/conf/inference/default.yaml`` document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from imaging.settings.check import PORT, setting


def _cuda_index(value: str) -> bool:
    return re.fullmatch(r"cuda:\d+", value) is not None


@dataclass
class InferenceSettings:
    """``inference.*``: sliding-window inference and postprocessing."""

    overlap: float = setting(0.25, min=0.0, lt=1.0)
    mode: str = setting("gaussian", choices=("gaussian", "constant"))
    sw_batch_size: int = setting(4, min=1)
    amp: bool = setting(True)
    tta_flip: bool = setting(False)
    largest_component: bool = setting(False)
    roi_size: list[int] | None = setting(None, length=3, each_min=1)
    device: str = setting("auto", choices=("auto", "cpu", "cuda"), pattern=_cuda_index,
                         expect="is not one of auto, cpu, cuda, cuda:N")
    threads: int | None = setting(None, min=1)
    labels: list[str] | None = setting(None)


@dataclass
class ShardSettings:
    index: int = setting(0, min=0, env_int=True)
    count: int = setting(1, min=1, env_int=True)
    offset: int = setting(0, min=0, env_int=True)


@dataclass
class QuerySettings:
    modality: str = setting("")
    date: str = setting("")
    patient_id: str = setting("")


@dataclass
class OutputSettings:
    rtstruct: bool = setting(False)
    preview: bool = setting(False)


@dataclass
class DimseSettings:
    host: str | None = setting(None)
    port: int = setting(104, **PORT)
    called_aet: str = setting("ANY-SCP")
    calling_aet: str = setting("IMAGING")


@dataclass
class SegSettings:
    enabled: bool = setting(True)
    identity: str = setting("deidentified", choices=("deidentified", "source"))
    type: str = setting("BINARY", choices=("BINARY", "LABELMAP"))
    geometry: str = setting("source", choices=("source", "regular"))
    push: bool = setting(False)
    dimse: DimseSettings = field(default_factory=DimseSettings)


@dataclass
class InferCommand:
    """The top-level keys of ``imaging infer`` (``model_uri``, ``input``, ``output_dir``: required, checked
    by the app as paths)."""

    model_uri: str = setting("")
    input: str = setting("")
    output_dir: str = setting("")
    study: list[str] | str = setting(None)
    query: QuerySettings = field(default_factory=QuerySettings)
    private_dir: str | None = setting(None)
    shard: ShardSettings = field(default_factory=ShardSettings)
    match_modality: bool = setting(True)
    fail_on_error: bool = setting(False)
    merge_only: bool = setting(False)
    prepare_only: bool = setting(False)
    prefetch: int = setting(2, min=0)
    prefetch_workers: int = setting(0, min=0)
    write_workers: int = setting(0, min=0)
    overlay: bool = setting(True)
    output: OutputSettings = field(default_factory=OutputSettings)
    seg: SegSettings = field(default_factory=SegSettings)
    secret_file: str | None = setting(None)
    demo_key: bool = setting(False)
