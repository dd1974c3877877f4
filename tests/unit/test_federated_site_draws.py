"""A site draws new patches every round, and the same patches when a round is run again
(a resumed coordinator): the loader's draws are a function of the epoch index, which
counts on across rounds. Checked on the tensors the loss really receives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from imaging.federated.coordinator import recipe_yaml
from imaging.federated.site import Site, SiteSettings, epoch_index, site_config
from tests.fixtures.train_data import CONF_DIR, make_train_dataset

LOCAL_EPOCHS = 2


def _site(tmp_path: Path, dataset: Path, work: str) -> Site:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("federate", overrides=[
            "experiment=demo_federated", f"paths.root_dir={tmp_path}", "federation.synthetic=null",
            "data.patch_size=[16,16,8]", "data.split.folds=3", "data.samples_per_volume=1",
            "model.channels=[4,8,16]", "model.strides=[2,2]", "trainer.progress=false"])
    settings = SiteSettings("A", dataset, tmp_path / work)
    return Site(site_config(recipe_yaml(cfg), settings), settings)


def _draws(site: Site, server_round: int) -> list[torch.Tensor]:
    """The label patches (and, through them, crops, flips and rotations) the loss sees in a round."""
    seen: list[torch.Tensor] = []
    loss = site.loss

    def recording(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append(target.detach().clone())
        return loss(logits, target)

    site.loss = recording
    try:
        site.train(site.state(), epochs=LOCAL_EPOCHS, lr=1e-3, server_round=server_round)
    finally:
        site.loss = loss
    return seen


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_rounds_draw_new_patches_and_a_resumed_round_the_same(tmp_path: Path) -> None:
    dataset = make_train_dataset(tmp_path / "ds", subjects=4, shape=(32, 32, 16))
    site = _site(tmp_path, dataset, "work")
    round1, round2 = _draws(site, 1), _draws(site, 2)
    assert round1 and len(round1) == len(round2)
    assert not any(torch.equal(x, y) for x, y in zip(round1, round2, strict=True)), \
        "round 2 repeated round 1's patches"
    # A coordinator that stopped after round 1 sends round 2 again: a fresh site process
    # (new loaders, new network) must draw exactly what the first run drew.
    again = _site(tmp_path, dataset, "work2")
    assert _same(_draws(again, 2), round2)
    assert _same(_draws(again, 1), round1)


def test_epoch_index_counts_on_across_rounds() -> None:
    assert [epoch_index(r, 3, e) for r in (1, 2) for e in range(3)] == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="server_round=0"):
        epoch_index(0, 3, 0)
