"""Global validation metrics: each label over the sites that have it, NaN-aware, counts
summed; ``dice_mean`` the mean over labels as central training defines it. Expected
values are worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest

from imaging.federated.aggregate import aggregate_site_metrics


def test_a_label_one_site_lacks_is_averaged_over_the_sites_that_have_it() -> None:
    # Two equal sites at 0.9 on liver; spleen only at A. Flower's weighted sum: spleen 0.45.
    a = {"dice_liver": 0.9, "dice_spleen": 0.9, "dice_mean": 0.9, "num-examples": 2.0}
    b = {"dice_liver": 0.9, "dice_mean": 0.9, "num-examples": 2.0}
    out = aggregate_site_metrics([a, b])
    assert out["dice_spleen"] == pytest.approx(0.9)
    assert out["dice_liver"] == pytest.approx(0.9)
    assert out["dice_mean"] == pytest.approx(0.9)
    assert out["num-examples"] == 4.0


def test_sites_are_weighted_by_their_cases_and_dice_mean_is_over_labels() -> None:
    # liver: (1*0.6 + 3*1.0) / 4 = 0.9; kidney only at B: 0.5; mean over labels (0.9 + 0.5) / 2 = 0.7
    # (a mean of the site means would give (1*0.6 + 3*0.75) / 4 = 0.7125).
    a = {"dice_liver": 0.6, "dice_mean": 0.6, "num-examples": 1.0}
    b = {"dice_liver": 1.0, "dice_kidney": 0.5, "dice_mean": 0.75, "num-examples": 3.0}
    out = aggregate_site_metrics([a, b])
    assert out["dice_liver"] == pytest.approx(0.9)
    assert out["dice_kidney"] == pytest.approx(0.5)
    assert out["dice_mean"] == pytest.approx(0.7)


def test_one_site_with_nan_does_not_make_the_federation_nan() -> None:
    # C has no labelled validation case: dice_mean NaN. A and B: liver (2*0.8 + 2*0.6) / 4 = 0.7.
    a = {"dice_liver": 0.8, "dice_mean": 0.8, "n_cases_with_labels": 2.0, "num-examples": 2.0}
    b = {"dice_liver": 0.6, "dice_mean": 0.6, "n_cases_with_labels": 1.0, "num-examples": 2.0}
    c = {"dice_mean": math.nan, "n_cases_with_labels": 0.0, "num-examples": 5.0}
    out = aggregate_site_metrics([a, b, c])
    assert out["dice_liver"] == pytest.approx(0.7)
    assert out["dice_mean"] == pytest.approx(0.7)
    assert out["n_cases_with_labels"] == 3.0
    assert out["num-examples"] == 9.0


def test_classification_metrics_are_weighted_means_and_all_nan_stays_nan() -> None:
    # auc: (1*0.5 + 3*0.9) / 4 = 0.8; accuracy: NaN everywhere -> NaN.
    out = aggregate_site_metrics([{"auc": 0.5, "accuracy": math.nan, "num-examples": 1.0},
                                  {"auc": 0.9, "accuracy": math.nan, "num-examples": 3.0}])
    assert out["auc"] == pytest.approx(0.8)
    assert math.isnan(out["accuracy"])
