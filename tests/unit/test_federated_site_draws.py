"""A site draws new patches every round, and the same patches when a round is run again
(a resumed coordinator): the loader's draws are a function of the epoch index, which
counts on across rounds. Checked on the tensors the loss really receives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.optim.optimizer import register_optimizer_step_pre_hook

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


def test_the_learning_rate_follows_the_trainer_schedule_across_rounds(tmp_path: Path) -> None:
    """Rounds x local epochs are one schedule (warmup, cosine to the floor), per optimizer step,
    compared with torch's own LinearLR + CosineAnnealingLR over the same steps."""
    dataset = make_train_dataset(tmp_path / "ds", subjects=4, shape=(32, 32, 16))
    site = _site(tmp_path, dataset, "work")
    rounds, lr = 3, 3e-3
    seen: list[float] = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    try:
        for rnd in range(1, rounds + 1):
            site.train(site.state(), epochs=LOCAL_EPOCHS, lr=lr, server_round=rnd, total_epochs=rounds * LOCAL_EPOCHS)
    finally:
        hook.remove()
    per_epoch = len(site.train_loader)
    total, warmup = rounds * LOCAL_EPOCHS * per_epoch, per_epoch  # demo_federated: warmup 1 epoch, floor 0.05
    assert site.cfg.trainer.scheduler.warmup_epochs == 1 and site.cfg.trainer.scheduler.min_lr_factor == 0.05
    ref_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    ref = torch.optim.lr_scheduler.SequentialLR(ref_opt, [
        torch.optim.lr_scheduler.LinearLR(ref_opt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1),
        torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=total - warmup, eta_min=0.05 * lr)],
        milestones=[warmup])
    expected = []
    for _ in range(total):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert seen == pytest.approx(expected, rel=1e-9)


def test_a_site_registers_the_precision_it_trains_in(tmp_path: Path) -> None:
    """Sites train in fp32: the preprocessing sent to the coordinator (and registered) says amp off,
    even where the experiment's trainer config asks for AMP."""
    dataset = make_train_dataset(tmp_path / "ds", subjects=4, shape=(32, 32, 16))
    site = _site(tmp_path, dataset, "work")
    assert site.plan.preprocessing["precision"]["amp"] is False
