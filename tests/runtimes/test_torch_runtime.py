"""TorchRuntime on the CPU: eager float32 inference of the spec's network, float16 NumPy out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bgblur.device import Device
from bgblur.models.registry import SegmentationModelSpec, get_model_spec
from bgblur.runtimes.select import build_runtime
from bgblur.runtimes.torch_runtime import TorchRuntime


def numpy_ellipse(h: int, w: int) -> np.ndarray:
    ys = (np.arange(h) + 0.5) / (h / 2) - 1
    xs = (np.arange(w) + 0.5) / (w / 2) - 1
    return ((ys[:, None] / 0.8) ** 2 + (xs[None, :] / 0.6) ** 2 <= 1).astype(np.float16)


class WeightedSigmoid(nn.Module):
    """``sigmoid(0.5 r - 0.25 g + 2 b + 0.1)`` by a 1x1 convolution (parameters that need grad),
    with a dropout that must be off in eval mode; records the dtype it was fed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.5, -0.25, 2.0]).reshape(1, 3, 1, 1))
            self.conv.bias.fill_(0.1)
        self.dropout = nn.Dropout(p=0.9)
        self.seen_dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen_dtypes.append(x.dtype)
        return torch.sigmoid(self.dropout(self.conv(x)))


def weighted_sigmoid_reference(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    z = 0.5 * x[:, 0] - 0.25 * x[:, 1] + 2.0 * x[:, 2] + 0.1
    return (1 / (1 + np.exp(-z)))[:, None]


def spec_for(module: nn.Module, built_with: list | None = None) -> SegmentationModelSpec:
    def build(cache_dir: Path | None) -> nn.Module:
        if built_with is not None:
            built_with.append(cache_dir)
        return module.train()  # the runtime must switch it to eval mode

    return SegmentationModelSpec(
        name="weighted_sigmoid",
        input_hw=(7, 13),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        weights="none",
        build=build,
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240619)


class TestTorchRuntimeCpu:
    def test_is_eager_on_the_cpu_even_when_cuda_graphs_are_asked_for(self) -> None:
        runtime = TorchRuntime(get_model_spec("fixed_ellipse"), Device("cpu"), cuda_graphs=True)
        assert runtime.name == "torch-eager-cpu"
        assert runtime.cuda_graphs is False
        assert not runtime.module.training

    def test_build_runtime_picks_torch_on_the_cpu(self) -> None:
        runtime = build_runtime(get_model_spec("fixed_ellipse"), Device("cpu"))
        assert isinstance(runtime, TorchRuntime)
        assert runtime.device == Device("cpu")

    @pytest.mark.parametrize("batch", [1, 3])
    @pytest.mark.parametrize("dtype", [np.float16, np.float32])
    def test_fixed_ellipse_gives_a_float16_numpy_probability(
        self, rng: np.random.Generator, batch: int, dtype
    ) -> None:
        runtime = TorchRuntime(get_model_spec("fixed_ellipse"), Device("cpu"))
        out = runtime(rng.standard_normal((batch, 3, 64, 64)).astype(dtype))
        assert isinstance(out, np.ndarray)
        assert out.shape == (batch, 1, 64, 64)
        assert out.dtype == np.float16
        for b in range(batch):
            np.testing.assert_array_equal(out[b, 0], numpy_ellipse(64, 64))

    @pytest.mark.parametrize("batch", [1, 3])
    def test_runs_the_network_in_float32_and_returns_float16(
        self, rng: np.random.Generator, batch: int
    ) -> None:
        module = WeightedSigmoid()
        runtime = TorchRuntime(spec_for(module), Device("cpu"))
        x = rng.standard_normal((batch, 3, 7, 13)).astype(np.float16)
        out = runtime(x)
        assert module.seen_dtypes == [torch.float32]
        assert out.dtype == np.float16 and out.shape == (batch, 1, 7, 13)
        expected = weighted_sigmoid_reference(x).astype(np.float16)
        np.testing.assert_allclose(out.astype(np.float32), expected.astype(np.float32), atol=1e-3)

    def test_network_runs_in_eval_mode_without_autograd(self, rng: np.random.Generator) -> None:
        runtime = TorchRuntime(spec_for(WeightedSigmoid()), Device("cpu"))
        assert not runtime.module.training
        x = rng.standard_normal((3, 3, 7, 13)).astype(np.float32)
        first, second = runtime(x), runtime(x)  # dropout p=0.9 would scramble both in train mode
        np.testing.assert_array_equal(first, second)
        np.testing.assert_allclose(
            first.astype(np.float32), weighted_sigmoid_reference(x), atol=1e-3
        )

    def test_noncontiguous(self, rng: np.random.Generator) -> None:
        runtime = TorchRuntime(spec_for(WeightedSigmoid()), Device("cpu"))
        x = rng.standard_normal((3, 4, 7, 26)).astype(np.float16)[:, 1:, :, ::2]
        assert not x.flags.c_contiguous
        out = runtime(x)
        np.testing.assert_allclose(out.astype(np.float32), weighted_sigmoid_reference(x), atol=1e-3)

    def test_leaves_the_input_untouched(self, rng: np.random.Generator) -> None:
        runtime = TorchRuntime(spec_for(WeightedSigmoid()), Device("cpu"))
        x = rng.standard_normal((2, 3, 7, 13)).astype(np.float16)
        before = x.copy()
        runtime(x)
        np.testing.assert_array_equal(x, before)

    def test_build_receives_the_cache_dir(self, tmp_path: Path) -> None:
        built_with: list = []
        TorchRuntime(spec_for(WeightedSigmoid(), built_with), Device("cpu"), cache_dir=tmp_path)
        TorchRuntime(spec_for(WeightedSigmoid(), built_with), Device("cpu"))
        assert built_with == [tmp_path, None]
