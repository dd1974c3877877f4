"""Global validation metrics from the sites' own (aggregate) metrics.

Not Flower's ``aggregate_metricrecords``: it weights every key by the site's share of *all*
sites' ``num-examples``, so a label that one site does not have (no ``dice_<label>`` in its
reply) is averaged as if that site scored 0 (two sites of equal size, one at 0.9 and one
without the label: 0.45), and one site's NaN makes the global value NaN (then no best
round is chosen and the last round's weights are registered).

Here each metric is the weighted mean over the sites that report a finite value for it,
weighted by their ``num-examples``; ``dice_mean`` is then the mean of the global per-label
Dice (as central training defines it: the mean over labels), not a mean of site means;
counts are summed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

WEIGHT_KEY = "num-examples"
# Counts over cases: summed over sites, not averaged.
SUMMED_PREFIXES = ("missed_",)
SUMMED = (WEIGHT_KEY, "n_cases_with_labels")


def _is_count(key: str) -> bool:
    return key in SUMMED or key.startswith(SUMMED_PREFIXES)


def aggregate_site_metrics(sites: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The federation's validation metrics from each site's ``{metric: value, num-examples: n}``.

    Returns:
        Weighted means over the sites with a finite value (a key no site has a finite value
        for is NaN), sums for counts, and ``dice_mean`` as the mean of the global
        ``dice_<label>`` values when the sites report per-label Dice.
    """
    rows = [dict(s) for s in sites]
    keys = sorted({k for r in rows for k in r})
    out: dict[str, float] = {}
    for key in keys:
        if _is_count(key):
            out[key] = float(sum(r[key] for r in rows if key in r and math.isfinite(r[key])))
            continue
        pairs = [(float(r.get(WEIGHT_KEY, 1.0)), float(r[key])) for r in rows
                 if key in r and math.isfinite(float(r[key]))]
        total = sum(w for w, _ in pairs)
        out[key] = sum(w * v for w, v in pairs) / total if pairs and total > 0 else math.nan
    labels = [v for k, v in out.items() if k.startswith("dice_") and k != "dice_mean" and math.isfinite(v)]
    if labels:
        out["dice_mean"] = sum(labels) / len(labels)
    return out
