"""``imaging submit pipeline``: ingest -> train -> infer as three Slurm jobs chained by ``afterok``.

The command line is split into sections::

    imaging submit pipeline launcher=slurm paths.root_dir=/proj/x \\
        ingest: input_dir=/proj/pacs output_dir=/proj/dataset secret_file=~/.imaging-secret \\
        train: experiment=demo_seg launcher.tasks_per_node=4 \\
        infer: input=/proj/pacs-new output_dir=/proj/pred launcher.array_tasks=8

Words before the first section go to every job (launcher values, ``paths.*``).
The jobs are wired where the user left a key out: training reads the dataset the
ingest job writes (``data.dataset_dir``), inference reads that dataset (``input``)
with the model the training job registers (``models:/<registered name>@<alias>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imaging.errors import UsageError
from imaging.launch.submit import Prepared, _has, prepare

STAGES = ("ingest", "train", "infer")


@dataclass
class Stage:
    """One job of the chain and the keys whose paths an earlier job creates."""

    prepared: Prepared
    produced: set[str] = field(default_factory=set)


def split_sections(words: Sequence[str]) -> dict[str, list[str]]:
    """``a=1 ingest: b=2 train: c=3`` -> ``{"": ["a=1"], "ingest": ["b=2"], "train": ["c=3"], "infer": []}``.

    Raises
    ------
    UsageError
        A section named twice or an unknown ``word:``.
    """
    sections: dict[str, list[str]] = {"": [], **{s: [] for s in STAGES}}
    seen: set[str] = set()
    current = ""
    for word in words:
        if word.endswith(":") and "=" not in word:
            name = word[:-1]
            if name not in STAGES:
                raise UsageError(f"pipeline section '{word}': expected one of {', '.join(s + ':' for s in STAGES)}")
            if name in seen:
                raise UsageError(f"pipeline section '{word}' given twice")
            seen.add(name)
            current = name
        else:
            sections[current].append(word)
    return sections


def prepare_pipeline(words: Sequence[str], *, cwd: Path | None = None) -> list[Stage]:
    """Compose and render the three jobs (nothing written, nothing submitted)."""
    sec = split_sections(words)
    shared = sec[""]
    ingest = prepare("ingest", [*shared, *sec["ingest"]], cwd=cwd)
    assert ingest.cfg is not None
    dataset = Path(str(ingest.cfg.output_dir))
    dataset = dataset if dataset.is_absolute() else ingest.spec.workdir / dataset
    train_ov = [*shared, *sec["train"]]
    produced_train = set()
    if not _has(train_ov, "data.dataset_dir"):
        train_ov.append(f"data.dataset_dir={dataset}")
        produced_train.add("data.dataset_dir")
    train = prepare("train", train_ov, cwd=cwd)
    assert train.cfg is not None
    infer_ov = [*shared, *sec["infer"]]
    produced_infer = set()
    if not _has(infer_ov, "input"):
        infer_ov.append(f"input={dataset}")
        produced_infer.add("input")
    if not (_has(infer_ov, "model") or _has(infer_ov, "model_uri")):
        tr = train.cfg.tracking
        if not tr.get("register", True):
            raise UsageError("train: tracking.register=false registers no model for infer: to run; "
                             "give infer: model=models:/NAME@ALIAS")
        infer_ov.append(f"model_uri=models:/{tr.registered_model_name}@{tr.alias}")
        produced_infer.add("model_uri")
    infer = prepare("infer", infer_ov, cwd=cwd)
    return [Stage(ingest), Stage(train, produced_train), Stage(infer, produced_infer)]
