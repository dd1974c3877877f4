"""A site's AdamW carried across rounds is one continuous AdamW, and the same-budget
baselines of a local federation train on what they say and are scored on every site.

Oracles: the kept-optimizer rounds are compared with one uninterrupted ``Site.train`` over
the same epochs (what central training does; with one site FedAvg's average is the site's
own weights); the baselines' step counts with the loaders' lengths of the sites' splits.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from imaging.errors import UsageError
from imaging.federated.baselines import check_kinds, ratios, run_baselines
from imaging.federated.coordinator import recipe_yaml
from imaging.federated.site import Site, SiteSettings, site_config
from tests.fixtures.train_data import CONF_DIR, make_train_dataset

E = 2  # local epochs per round


def _recipe(tmp_path: Path, *extra: str) -> str:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("federate", overrides=[
            "experiment=demo_federated", f"paths.root_dir={tmp_path}", "federation.synthetic=null",
            "data.patch_size=[16,16,8]", "data.split.folds=3", "data.samples_per_volume=1",
            "model.channels=[4,8,16]", "model.strides=[2,2]", "trainer.progress=false", *extra])
    return recipe_yaml(cfg)


def _site(recipe: str, dataset: Path, work: Path) -> Site:
    settings = SiteSettings("A", dataset, work)
    return Site(site_config(recipe, settings), settings)


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=1e-5) for k in a)


def test_kept_moments_make_rounds_one_continuous_adamw(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    dataset = make_train_dataset(tmp_path / "ds", subjects=4, shape=(32, 32, 16))
    # The first training in a process ends ~1e-2 off later ones from the same inputs (seen on
    # CPU, not from the draws: those are equal); the runs compared below all come after it.
    warm = _site(recipe, dataset, tmp_path / "w0")
    init = warm.state()
    warm.train(init, epochs=1, lr=3e-3)
    site = _site(recipe, dataset, tmp_path / "w1")
    # Oracle: one uninterrupted run of 2 x E epochs on the same schedule and draws.
    continuous, _ = site.train(init, epochs=2 * E, lr=3e-3, server_round=1, total_epochs=2 * E)

    rounds = _site(recipe, dataset, tmp_path / "w2")
    state, m1 = rounds.train(init, epochs=E, lr=3e-3, server_round=1, total_epochs=2 * E, keep_optimizer=True)
    kept, m2 = rounds.train(state, epochs=E, lr=3e-3, server_round=2, total_epochs=2 * E, keep_optimizer=True)
    assert all(torch.equal(kept[k], continuous[k]) for k in kept), "kept moments: two rounds differ from one continuous AdamW"
    assert m1["steps"] + m2["steps"] == len(site.train_loader) * 2 * E

    fresh = _site(recipe, dataset, tmp_path / "w3")
    state, _ = fresh.train(init, epochs=E, lr=3e-3, server_round=1, total_epochs=2 * E)
    restarted, _ = fresh.train(state, epochs=E, lr=3e-3, server_round=2, total_epochs=2 * E)
    assert not _close(restarted, continuous), "a fresh AdamW per round should differ from the continuous run"


def test_a_site_that_missed_a_round_starts_fresh_moments(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    dataset = make_train_dataset(tmp_path / "ds", subjects=4, shape=(32, 32, 16))
    site = _site(recipe, dataset, tmp_path / "w")
    state, m1 = site.train(site.state(), epochs=E, lr=3e-3, server_round=1, keep_optimizer=True)
    first = site._optimizer
    site.train(state, epochs=E, lr=3e-3, server_round=3, keep_optimizer=True)  # round 2 was lost
    assert site._optimizer is not first
    steps = {int(s["step"]) for s in site._optimizer.state.values()}
    assert steps == {int(m1["steps"])}, "moments of the skipped-over round leaked into round 3"


def test_baselines_train_on_what_they_say_and_are_scored_on_every_site(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "data.batch_size=1")
    datasets = {"A": make_train_dataset(tmp_path / "A", subjects=4, shape=(32, 32, 16), seed=1),
                "B": make_train_dataset(tmp_path / "B", subjects=5, shape=(32, 32, 16), seed=2)}
    probe = {s: _site(recipe, d, tmp_path / f"probe{s}") for s, d in datasets.items()}
    n_train = {s: len(site.train_items) for s, site in probe.items()}
    n_val = {s: len(site.val_items) for s, site in probe.items()}
    epochs = 2
    federated = {"federated_last": probe["A"].state()}
    scored = {s.name: s for s in run_baselines(recipe, datasets, tmp_path / "work", epochs=epochs, lr=3e-3,
                                               kinds=["pooled", "single"], federated=federated)}
    assert set(scored) == {"federated_last", "pooled", "single_A", "single_B"}
    # batch_size 1: one optimizer step per training case and epoch.
    assert scored["pooled"].steps == epochs * (n_train["A"] + n_train["B"])
    assert scored["single_A"].steps == epochs * n_train["A"]
    assert scored["single_B"].steps == epochs * n_train["B"]
    for s in scored.values():  # every model on every site's held-out subjects, weighted by their number
        assert set(s.per_site) == {"A", "B"}
        assert {k: v["num-examples"] for k, v in s.per_site.items()} == n_val
        for label in ("liver", "spleen", "kidney"):
            key = f"dice_{label}"
            a, b = s.per_site["A"].get(key, math.nan), s.per_site["B"].get(key, math.nan)
            expected = (a * n_val["A"] + b * n_val["B"]) / (n_val["A"] + n_val["B"])
            assert s.metrics[key] == pytest.approx(expected, nan_ok=True)
    r = ratios(list(scored.values()), "pooled", "single_A")
    assert r["dice_mean"] == pytest.approx(scored["pooled"].metrics["dice_mean"] / scored["single_A"].metrics["dice_mean"])


def test_unknown_baseline_kinds_are_refused() -> None:
    assert check_kinds(["single", "pooled", "single"]) == ["single", "pooled"]
    with pytest.raises(UsageError, match="central"):
        check_kinds(["central"])


def test_the_federation_starts_where_its_sites_and_baselines_start(tmp_path: Path) -> None:
    """The coordinator's round-0 weights are drawn under trainer.seed: equal to a Site's own start
    (the baselines' start), whatever else drew random numbers before."""
    from imaging.federated.coordinator import initial_network

    recipe = _recipe(tmp_path)
    site = _site(recipe, make_train_dataset(tmp_path / "ds", subjects=4, shape=(32, 32, 16)), tmp_path / "w")
    torch.rand(7)  # another draw in between changes nothing
    network = initial_network(site.plan.network_config, int(site.cfg.trainer.seed))
    state = site.state()
    assert all(torch.equal(v, state[k]) for k, v in network.state_dict().items())
    other = initial_network(site.plan.network_config, int(site.cfg.trainer.seed) + 1)
    assert not all(torch.equal(v, state[k]) for k, v in other.state_dict().items())
