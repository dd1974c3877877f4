"""One precision setting (trainer.amp, trainer.amp_dtype) for training, validation, inference and the model.

The network records the autocast dtype in force when it runs (``torch.get_autocast_dtype``
of its device), so the test sees the context each code path really opened. On this CPU the
autocast is disabled (AMP is CUDA-only) but its dtype is still the one the path asked for;
without a dtype, torch falls back to the device default (bfloat16 on CPU, float16 on CUDA:
the bug), which the float16 case catches here as the bfloat16 case would on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imaging.engine.distributed import Dist, DistEnv
from imaging.engine.loops import AMP_DTYPES, validate
from imaging.engine.predict import InferenceOptions, SeriesPredictor, served_precision
from imaging.engine.review_cases import review_cases
from imaging.models.registry import build_network
from imaging.plan.train import validate_config
from imaging.tracking.registry import read_bundle_dir, write_bundle
from tests.fixtures.train_data import compose_train, make_train_dataset

CPU = Dist(env=DistEnv(), device=torch.device("cpu"))


class Recording(torch.nn.Module):
    """The run's network, noting (autocast enabled, autocast dtype) at each forward."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = x.device.type
        self.seen.append((torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)))
        return self.inner(x)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_train_dataset(tmp_path_factory.mktemp("ds"), subjects=6, shape=(16, 16, 8))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_validation_review_and_inference_use_the_trained_dtype(tmp_path: Path, dataset: Path, dtype: str) -> None:
    plan = validate_config(compose_train(tmp_path, dataset, f"trainer.amp_dtype={dtype}"))
    assert plan.preprocessing["precision"] == {"amp": True, "amp_dtype": dtype}
    want = AMP_DTYPES[dtype]
    net = Recording(build_network(plan.network_config).eval())
    roi = plan.preprocessing["roi_size"]
    batch = {"image": torch.zeros(1, 1, *roi), "label": torch.zeros(1, 1, *roi), "series_key": ["k"]}

    validate(model=net, loader=[batch], task="segmentation", num_classes=plan.num_classes, names=plan.class_names,
             d=CPU, roi_size=roi, amp=False, amp_dtype=dtype, progress=False)
    review_cases(net, [batch], 1, roi, CPU.device, amp=False, amp_dtype=dtype)
    assert net.seen and set(net.seen) == {(False, want)}

    # The registered model carries it: bundle.json's preprocessing, read back as inference reads it.
    write_bundle(tmp_path / "bundle", net.inner, plan.network_config, plan.preprocessing, plan.class_names,
                 plan.task)
    served_net, bundle = read_bundle_dir(tmp_path / "bundle")
    assert bundle["preprocessing"]["precision"] == {"amp": True, "amp_dtype": dtype}
    served = Recording(served_net)
    volume = next((dataset / "volumes").glob("*.nii.gz"))
    SeriesPredictor(served, bundle["preprocessing"], InferenceOptions(device="cpu")).predict(volume)
    assert served.seen and set(served.seen) == {(False, want)}


def test_served_precision_policy() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    fp16 = {"precision": {"amp": True, "amp_dtype": "float16"}}
    assert served_precision(fp16, True, cuda) == (True, "float16")
    assert served_precision(fp16, True, cpu) == (False, "float16")  # AMP is CUDA-only, as in training
    assert served_precision(fp16, False, cuda) == (False, "float16")  # inference.amp=false: float32
    assert served_precision({"precision": {"amp": False, "amp_dtype": "float16"}}, True, cuda)[0] is False
    assert served_precision({}, True, cuda) == (True, "float16")  # a model registered before: as served then
    bf16 = {"precision": {"amp": True, "amp_dtype": "bfloat16"}}
    # A GPU without bfloat16 serves a bfloat16 model in float32, never in float16.
    assert served_precision(bf16, True, cuda) == (torch.cuda.is_bf16_supported(), "bfloat16")
