"""Cross-site evaluation, the coordinator's side (issue 31), run inside Flower's ServerApp.

``imaging evaluate`` writes the registered model's files (``bundle.json`` +
``weights.safetensors``) into its run dir and a server config with an ``evaluation``
section; the ServerApp (:mod:`imaging.federated.serverapp`) sees that section and calls
:func:`run_cross_site`: one ``evaluate.model`` message per connected site carrying the
weights and the bundle config (sites never need the registry), the sites' aggregates
back, pooled, written to ``<run_dir>/evaluation.json``. A site that does not answer in
time is a *gap* named in the result, not a failed run. MLflow is logged afterwards by the
pipeline, from that file: this process holds no store credentials it does not need.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from omegaconf import DictConfig

from imaging.fsutil import atomic_write_json

log = logging.getLogger(__name__)

RESULT = "evaluation.json"
MODEL_DIR = "model"
MESSAGE_TYPE = "evaluate.model"  # Flower routes it to the ClientApp's @app.evaluate("model")
# Per-label figures pooled by their case counts (n_<label>); volumes by the site's cases.
_BY_LABEL_CASES = ("dice_", "hd95_")


def pool(per_site: dict[str, dict[str, float]], labels: list[str]) -> dict[str, float]:
    """Pooled figures over the sites that answered: per label, the case-weighted mean over
    the sites that have that label (weights ``n_<label>``: cases with the organ in their
    reference); ``missed_*`` and ``n_*`` summed; volumes weighted by ``n_cases``;
    ``dice_mean``/``hd95_mean`` over the labels pooled."""
    out: dict[str, float] = {"n_cases": float(sum(m.get("n_cases", 0.0) for m in per_site.values()))}
    if any("n_rule_excluded" in m for m in per_site.values()):
        out["n_rule_excluded"] = float(sum(m.get("n_rule_excluded", 0.0) for m in per_site.values()))
    for name in labels:
        have = {s: m for s, m in per_site.items() if m.get(f"n_{name}", 0.0) > 0}
        n = sum(m[f"n_{name}"] for m in have.values())
        out[f"n_{name}"] = float(n)
        if not have:
            continue
        out[f"missed_{name}"] = float(sum(m.get(f"missed_{name}", 0.0) for m in have.values()))
        for prefix in _BY_LABEL_CASES:
            vals = [(m[f"{prefix}{name}"], m[f"n_{name}"]) for m in have.values() if f"{prefix}{name}" in m]
            if vals:
                out[f"{prefix}{name}"] = sum(v * w for v, w in vals) / sum(w for _, w in vals)
        for kind in ("pred", "ref"):
            key = f"volume_{kind}_ml_{name}"
            vals = [(m[key], m["n_cases"]) for m in per_site.values() if key in m and m.get("n_cases", 0) > 0]
            if vals:
                out[key] = sum(v * w for v, w in vals) / sum(w for _, w in vals)
    for prefix in ("dice_", "hd95_"):
        got = [out[f"{prefix}{n}"] for n in labels if f"{prefix}{n}" in out]
        if got:
            out[f"{prefix}mean"] = sum(got) / len(got)
    return out


def _arrays(model_dir: Path) -> ArrayRecord:
    from safetensors.numpy import load_file

    weights = load_file(str(next(model_dir.rglob("weights.safetensors"))))
    return ArrayRecord(array_dict={k: Array(ndarray=v) for k, v in weights.items()})


def _wait_for_sites(grid: Grid, n: int, timeout_s: float) -> list[int]:
    """Node ids once ``n`` nodes are connected, or those connected after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n or time.monotonic() > deadline:
            return nodes
        time.sleep(1.0)


def _received(reply: Message, site: str) -> dict[str, Any]:
    """What a reply carried: record names -> type and keys (checked by the tests: aggregates only)."""
    return {"site": site, "records": {name: {"type": type(rec).__name__, "keys": sorted(rec.keys())}
                                      for name, rec in reply.content.items()}}


def run_cross_site(grid: Grid, cfg: DictConfig) -> dict[str, Any]:
    """Send the model to every site, collect and pool the answers; see module doc."""
    run_dir = Path(str(cfg.run_dir))
    ev = cfg.evaluation
    sites = [str(s) for s in cfg.federation.sites]
    request = (run_dir / MODEL_DIR / "request.json").read_text(encoding="utf-8")
    labels = [str(v) for k, v in sorted(json.loads(request)["labels"].items(), key=lambda kv: int(kv[0]))
              if int(k) != 0]
    arrays = _arrays(run_dir / MODEL_DIR)
    nodes = _wait_for_sites(grid, len(sites), float(cfg.federation.connect_timeout_s))
    start = time.perf_counter()
    messages = [Message(RecordDict({"arrays": arrays, "request": ConfigRecord({"json": request})}),
                        dst_node_id=nid, message_type=MESSAGE_TYPE) for nid in nodes]
    per_site: dict[str, dict[str, float]] = {}
    catalogs: dict[str, str] = {}
    errors: dict[str, str] = {}
    wire: list[dict[str, Any]] = []
    for reply in grid.send_and_receive(messages, timeout=float(cfg.federation.round_timeout_s)):
        if reply.has_error():
            # Only the exception types cross: the site's text may name its own paths, and this
            # record reaches evaluation.json and MLflow. The text stays in the site's worker.log.
            errors[f"node-{reply.metadata.src_node_id}"] = error_summary(str(reply.error.reason))
            continue
        who = reply.content.config_records["site"]
        site = str(who["name"])
        per_site[site] = {k: float(v) for k, v in reply.content.metric_records["metrics"].items()
                          if isinstance(v, int | float) and math.isfinite(float(v))}
        catalogs[site] = str(who["catalog_sha256"])
        wire.append(_received(reply, site))
    gaps = sorted(set(sites) - set(per_site))
    if gaps:
        log.warning("no answer from site(s) %s: the pooled figures cover %s", ", ".join(gaps),
                    ", ".join(sorted(per_site)) or "no site")
    # Answered, but the model's rule (or the split) left no case there: reported, not an error.
    no_cases = sorted(s for s, m in per_site.items() if m.get("n_cases", 0.0) == 0)
    if no_cases:
        log.warning("no case to evaluate at site(s) %s (the model's selection rule or the split)", ", ".join(no_cases))
    result = {"model_uri": str(ev.model_uri), "split": str(ev.split), "sites": sites,
              "answered": sorted(per_site), "gaps": gaps, "no_cases": no_cases, "errors": errors, "per_site": per_site,
              "catalog_sha256": catalogs, "pooled": pool(per_site, labels), "labels": labels,
              "received": wire, "seconds": round(time.perf_counter() - start, 2)}
    atomic_write_json(run_dir / RESULT, result)
    return result


_ERROR_TYPE = re.compile(r"\b[A-Z][A-Za-z0-9_]*(?:Error|Exception|Exit|Interrupt)\b")


def error_summary(reason: str) -> str:
    """The exception type(s) named in a site's error reply, never its message text."""
    types = list(dict.fromkeys(_ERROR_TYPE.findall(reason)))
    return (" / ".join(types) if types else "error") + " at the site (its worker.log has the details)"
