"""The one boundary an exception crosses on its way into dataset-side text.

Catalog reasons, inference report rows, study reports, console lines and the MLflow
description are read outside the hospital. An exception's own text is not ours to
publish: library messages carry absolute source paths (folder names of real exports
are often the patient's name and birth date) and header values. So
:func:`failure_reason` composes the reason from typed parts only (the stage, the
exception type, the DICOM tag when one is known) and appends the raw text (message,
causes, traceback) to the owner-only ``errors.jsonl`` on the private side
(``<dataset>.private/`` for ingest, the batch's private side for inference), where an
engineer can still find the file. Nothing is scrubbed: the message never reaches the
dataset side, so no shape of name can slip through a pattern.

Our own errors whose messages our code composes from keys and values (``SeriesError``
and the like) may be passed as ``own`` and cross as they are.
"""

from __future__ import annotations

import json
import os
import re
import time
import traceback
from functools import lru_cache
from pathlib import Path

ERRORS_FILE = "errors.jsonl"
_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)")
# Keywords of two words or more: one-word keywords ("Plane", "Rows") are ordinary words in messages.
_WORD = re.compile(r"\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+\b")


@lru_cache(maxsize=1)
def _keywords() -> dict[str, int]:
    from pydicom.datadict import keyword_dict

    return dict(keyword_dict)


def _tag_text(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    keyword = keyword_for_tag(tag)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})" + (f" {keyword}" if keyword else "")


def dicom_tag(exc: BaseException) -> str:
    """The first DICOM attribute the exception names, as ``(gggg,eeee) Keyword``; '' when none.

    Only the dictionary's own spelling is returned, never text of the message: a tag is
    looked up, not copied. ``(gggg,eeee)`` forms win over keywords (``KeyError('PixelSpacing')``,
    "attribute ImageOrientationPatient ...").
    """
    texts = [str(a) for a in exc.args if isinstance(a, str)] or [str(exc)]
    for text in texts:
        if (m := _TAG.search(text)) is not None:
            return _tag_text(int(m[1] + m[2], 16))
    known = _keywords()
    for text in texts:
        for word in _WORD.findall(text):
            if word in known:
                return _tag_text(known[word])
    return ""


def compose(stage: str, exc: BaseException) -> str:
    """``<stage>: <ExceptionType>[ at (gggg,eeee) Keyword]``: the reason a dataset-side row carries."""
    tag = dicom_tag(exc)
    return f"{stage}: {type(exc).__name__}" + (f" at {tag}" if tag else "") + " (details in the private errors.jsonl)"


def record_private(private_dir: Path | None, *, stage: str, where: str, exc: BaseException) -> Path | None:
    """Append the raw exception (message, causes, traceback) to ``<private_dir>/errors.jsonl`` (0600).

    One ``write(2)`` of one line on an ``O_APPEND`` descriptor: writer processes and ingest
    workers append side by side without a lock. Without a private side the text is dropped:
    it must not go anywhere else.
    """
    if private_dir is None:
        return None
    private_dir = Path(private_dir)
    private_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = private_dir / ERRORS_FILE
    causes: list[dict[str, str]] = []
    cause = exc.__cause__ or exc.__context__
    while cause is not None and len(causes) < 5:
        causes.append({"type": type(cause).__name__, "message": str(cause)})
        cause = cause.__cause__ or cause.__context__
    rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stage": stage, "where": where,
           "type": type(exc).__name__, "message": str(exc), "causes": causes,
           "traceback": "".join(traceback.format_exception(exc))}
    line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file created with a looser umask
        os.write(fd, line)
    finally:
        os.close(fd)
    return path




def failure_reason(exc: BaseException, *, stage: str, where: str, private_dir: Path | None,
                   own: tuple[type[BaseException], ...] = ()) -> str:
    """The dataset-side reason for ``exc``; its raw text goes to the private ``errors.jsonl``.

    Args:
        exc: what was raised.
        stage: the step that failed (``seg``, ``rtstruct``, ``read``, ``ingest``...).
        where: the keyed location (series key or ``file-<key>``); written to the private record.
        private_dir: the private side (owner-only); None drops the raw text.
        own: our error types whose messages are composed from keys and values: they cross as they are.

    Returns:
        ``str(exc)`` for ``own`` errors, else ``<stage>: <Type>[ at (gggg,eeee) Keyword] (...)``.
    """
    if own and isinstance(exc, own):
        return str(exc)
    record_private(private_dir, stage=stage, where=where, exc=exc)
    return compose(stage, exc)
