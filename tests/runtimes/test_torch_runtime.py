"""TorchRuntime: eager float32 on the CPU (float16 NumPy out); the bucket logic (static buffers,
padding to the next batch size, chunks above the largest) on the CPU; CUDA graphs captured at
load for every bucket on the GPU (``gpu`` marker)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bgblur.device import Device
from bgblur.errors import InvalidInputError, ModelUnavailableError
from bgblur.models.registry import SegmentationModelSpec, get_model_spec
from bgblur.runtimes.select import build_runtime
from bgblur.runtimes.torch_runtime import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_COMPILE_MODE,
    TorchRuntime,
    normalize_batch_sizes,
    plan_batches,
    resolve_compile_mode,
)


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


# --------------------------------------------------------------------------------------------
# Buckets: static buffers, padding up to the next batch size, chunks above the largest
# --------------------------------------------------------------------------------------------


class RecordingSigmoid(WeightedSigmoid):
    """``WeightedSigmoid`` that also records every input it is fed (copies)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return super().forward(x)


@pytest.mark.parametrize(
    ("batch", "sizes", "plan"),
    [
        (0, (1, 2, 4, 8), []),
        (1, (1, 2, 4, 8), [(0, 1, 1)]),
        (3, (1, 2, 4, 8), [(0, 3, 4)]),
        (5, (1, 2, 4, 8), [(0, 5, 8)]),
        (8, (1, 2, 4, 8), [(0, 8, 8)]),
        (11, (1, 2, 4, 8), [(0, 8, 8), (8, 3, 4)]),
        (17, (1, 2, 4, 8), [(0, 8, 8), (8, 8, 8), (16, 1, 1)]),
        (7, (4,), [(0, 4, 4), (4, 3, 4)]),
        (2, (3, 5), [(0, 2, 3)]),
    ],
)
def test_plan_batches(batch: int, sizes: tuple[int, ...], plan: list) -> None:
    assert plan_batches(batch, sizes) == plan


def test_batch_sizes_are_sorted_unique_and_positive() -> None:
    assert normalize_batch_sizes([8, 1, 4, 2, 4]) == (1, 2, 4, 8)
    for bad in ([], [0, 1], [-2], ["x"]):
        with pytest.raises(ValueError, match="batch sizes"):
            normalize_batch_sizes(bad)
    with pytest.raises(ValueError, match="batch sizes"):
        TorchRuntime(get_model_spec("fixed_ellipse"), Device("cpu"), batch_sizes=())


def test_default_buckets_cover_the_segmentation_max_batch_size() -> None:
    assert DEFAULT_BATCH_SIZES[-1] >= 8  # model_repository/segmentation/config.pbtxt


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        (False, None),
        (None, None),
        ("off", None),
        (True, DEFAULT_COMPILE_MODE),
        ("on", DEFAULT_COMPILE_MODE),
        ("reduce-overhead", "reduce-overhead"),
        ("Default", "default"),
    ],
)
def test_resolve_compile_mode(value, mode) -> None:
    assert resolve_compile_mode(value) == mode


def test_unknown_compile_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"torch\.compile mode"):
        resolve_compile_mode("fastest")


class TestBucketsCpu:
    """The GPU's pad-and-chunk path, run eagerly on the CPU (``bucketed=True``)."""

    def runtime(self, module: nn.Module, sizes=(1, 2, 4)) -> TorchRuntime:
        return TorchRuntime(spec_for(module), Device("cpu"), batch_sizes=sizes, bucketed=True)

    def test_a_batch_of_3_pads_to_4_and_equals_three_singles(
        self, rng: np.random.Generator
    ) -> None:
        module = RecordingSigmoid()
        runtime = self.runtime(module)
        x = rng.standard_normal((3, 3, 7, 13)).astype(np.float16)
        out = runtime(x)
        assert [t.shape[0] for t in module.seen] == [4]
        assert out.shape == (3, 1, 7, 13) and out.dtype == np.float16
        singles = np.concatenate([runtime(x[i : i + 1]) for i in range(3)])
        assert [t.shape[0] for t in module.seen] == [4, 1, 1, 1]
        np.testing.assert_array_equal(out, singles)
        np.testing.assert_allclose(out.astype(np.float32), weighted_sigmoid_reference(x), atol=1e-3)

    def test_padding_rows_are_zeros(self, rng: np.random.Generator) -> None:
        module = RecordingSigmoid()
        runtime = self.runtime(module)
        runtime(rng.standard_normal((4, 3, 7, 13)).astype(np.float32))
        runtime(rng.standard_normal((3, 3, 7, 13)).astype(np.float32))
        fed = module.seen[-1]
        assert fed.shape[0] == 4 and fed.dtype == torch.float32
        assert torch.count_nonzero(fed[3]) == 0 and torch.count_nonzero(fed[:3]) > 0

    def test_batches_above_the_largest_size_run_in_chunks(self, rng: np.random.Generator) -> None:
        module = RecordingSigmoid()
        runtime = self.runtime(module)
        x = rng.standard_normal((11, 3, 7, 13)).astype(np.float16)
        out = runtime(x)
        assert [t.shape[0] for t in module.seen] == [4, 4, 4]  # 4 + 4 + (3 padded to 4)
        singles = np.concatenate([runtime(x[i : i + 1]) for i in range(11)])
        np.testing.assert_array_equal(out, singles)
        np.testing.assert_allclose(out.astype(np.float32), weighted_sigmoid_reference(x), atol=1e-3)

    def test_every_row_lands_in_its_place(self) -> None:
        runtime = TorchRuntime(
            get_model_spec("fixed_ellipse"), Device("cpu"), batch_sizes=(2, 4), bucketed=True
        )
        for batch in (0, 1, 2, 3, 4, 5, 9):
            out = runtime(np.zeros((batch, 3, 64, 64), np.float16))
            assert out.shape == (batch, 1, 64, 64)
            for b in range(batch):
                np.testing.assert_array_equal(out[b, 0], numpy_ellipse(64, 64))

    def test_selfie_general_padded_equals_singles(self, rng: np.random.Generator) -> None:
        try:
            spec = get_model_spec("selfie_general")
            runtime = TorchRuntime(spec, Device("cpu"), batch_sizes=(1, 2, 4), bucketed=True)
        except ModelUnavailableError as exc:
            pytest.skip(f"selfie weights not available here: {exc}")
        x = rng.random((3, 3, *spec.input_hw)).astype(np.float16)
        out = runtime(x)
        singles = np.concatenate([runtime(x[i : i + 1]) for i in range(3)])
        np.testing.assert_allclose(out.astype(np.float32), singles.astype(np.float32), atol=2e-3)

    def test_bucketed_input_must_have_the_network_size(self) -> None:
        runtime = self.runtime(WeightedSigmoid())
        with pytest.raises(InvalidInputError, match=r"\[B, 3, 7, 13\]"):
            runtime(np.zeros((1, 3, 7, 12), np.float16))
        with pytest.raises(InvalidInputError):
            runtime(np.zeros((3, 7, 13), np.float16))

    def test_name_and_describe(self) -> None:
        runtime = self.runtime(WeightedSigmoid(), sizes=(4, 1))
        assert runtime.name == "torch-eager-cpu"
        assert runtime.batch_sizes == (1, 4)
        text = runtime.describe()
        assert "fp32" in text and "static buffers for batch 1,4" in text and "on cpu" in text

    def test_unbucketed_cpu_runs_any_size_at_its_own_batch(self, rng: np.random.Generator) -> None:
        module = RecordingSigmoid()
        runtime = TorchRuntime(spec_for(module), Device("cpu"))
        assert runtime.bucketed is False and "eager" in runtime.describe()
        runtime(rng.standard_normal((3, 3, 9, 5)).astype(np.float16))
        assert [tuple(t.shape) for t in module.seen] == [(3, 3, 9, 5)]

    def test_compile_is_ignored_on_the_cpu(self) -> None:
        runtime = TorchRuntime(get_model_spec("fixed_ellipse"), Device("cpu"), compile=True)
        assert runtime.compile_mode is None and runtime._forward is runtime.module


# --------------------------------------------------------------------------------------------
# The GPU: graphs captured at load for every bucket, padded results equal unpadded eager
# --------------------------------------------------------------------------------------------


def _cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA torch")


def _spec_or_skip(name: str) -> SegmentationModelSpec:
    spec = get_model_spec(name)
    try:
        spec.build(None)
    except ModelUnavailableError as exc:
        pytest.skip(f"{name} weights not available here: {exc}")
    return spec


@pytest.fixture(scope="module")
def selfie_on_gpu() -> dict:
    """selfie_general with CUDA graphs, eager on the GPU, and on the CPU (built once)."""
    _cuda()
    spec = _spec_or_skip("selfie_general")
    return {
        "spec": spec,
        "graphs": TorchRuntime(spec, Device("gpu", 0)),
        "eager": TorchRuntime(spec, Device("gpu", 0), cuda_graphs=False),
        "cpu": TorchRuntime(spec, Device("cpu")),
    }


@pytest.mark.gpu
class TestTorchRuntimeGpu:
    gpu = Device("gpu", 0)

    def test_captures_a_graph_per_bucket_at_load_and_none_later(self) -> None:
        _cuda()
        runtime = TorchRuntime(get_model_spec("fixed_ellipse"), self.gpu)
        assert runtime.name == "torch-cuda-graphs-gpu:0"
        assert runtime.batch_sizes == DEFAULT_BATCH_SIZES
        assert runtime.captures == len(DEFAULT_BATCH_SIZES)
        assert sorted(runtime._buckets) == list(DEFAULT_BATCH_SIZES)
        assert all(b.graph is not None for b in runtime._buckets.values())
        for batch in (1, 2, 3, 5, 8, 11, 19):
            out = runtime(torch.zeros((batch, 3, 64, 64), device="cuda", dtype=torch.float16))
            assert out.shape == (batch, 1, 64, 64) and out.dtype == torch.float16
            assert out.is_cuda and out.is_contiguous()
            expected = torch.from_numpy(numpy_ellipse(64, 64)).cuda()
            assert torch.equal(out[:, 0], expected.expand(batch, 64, 64))
        assert runtime.captures == len(DEFAULT_BATCH_SIZES)
        assert "CUDA graphs captured at load for batch 1,2,4,8" in runtime.describe()

    @pytest.mark.parametrize("batch", [1, 3, 8, 11])
    def test_selfie_padded_graphs_equal_unpadded_eager(
        self, selfie_on_gpu: dict, batch: int
    ) -> None:
        selfie = selfie_on_gpu
        spec, graphs, eager = selfie["spec"], selfie["graphs"], selfie["eager"]
        assert eager.name == "torch-eager-gpu:0" and eager.captures == 0
        gen = torch.Generator(device="cuda").manual_seed(batch)
        x = torch.rand((batch, 3, *spec.input_hw), device="cuda", generator=gen).half()
        got, want = graphs(x), eager(x)
        assert got.shape == want.shape == (batch, 1, *spec.input_hw)
        diff = (got.float() - want.float()).abs()
        assert float(diff.max()) <= 0.05 and float(diff.mean()) <= 1e-3, (
            float(diff.max()),
            float(diff.mean()),
        )
        singles = torch.cat([graphs(x[i : i + 1]) for i in range(batch)])
        diff = (got.float() - singles.float()).abs()
        assert float(diff.max()) <= 0.05 and float(diff.mean()) <= 1e-3
        # and the fp16 network agrees with the CPU's fp32 one
        cpu = selfie["cpu"](x.cpu().numpy())
        diff = np.abs(got.cpu().numpy().astype(np.float32) - cpu.astype(np.float32))
        assert diff.mean() <= 2e-3 and diff.max() <= 0.1, (diff.max(), diff.mean())

    def test_waits_for_the_callers_stream(self) -> None:
        _cuda()
        runtime = TorchRuntime(spec_for(WeightedSigmoid()), self.gpu, batch_sizes=(1, 2))
        x = torch.zeros((2, 3, 7, 13), device="cuda", dtype=torch.float16)
        torch.cuda._sleep(100_000_000)  # keep the caller's stream busy, then write x there
        x.fill_(1.0)
        out = runtime(x)
        expected = torch.sigmoid(torch.tensor(0.5 - 0.25 + 2.0 + 0.1))
        assert torch.allclose(out.float().cpu(), expected.expand(2, 1, 7, 13), atol=1e-3)

    def test_accepts_cupy_and_float32(self) -> None:
        _cuda()
        cupy = pytest.importorskip("cupy")
        runtime = TorchRuntime(spec_for(WeightedSigmoid()), self.gpu, batch_sizes=(4,))
        host = np.random.default_rng(0).standard_normal((3, 3, 7, 13)).astype(np.float32)
        out = runtime(cupy.asarray(host))
        assert isinstance(out, torch.Tensor) and out.shape == (3, 1, 7, 13)
        expected = weighted_sigmoid_reference(host)
        np.testing.assert_allclose(out.float().cpu().numpy(), expected, atol=5e-3)
        with pytest.raises(InvalidInputError):
            runtime(cupy.zeros((1, 3, 8, 13), dtype=cupy.float16))


class TestSegmentationBatchBuckets:
    """``--segmentation-batch 64``: the rendered config's buckets reach the runtime, and batches
    merged from several requests (16-64 frames) pad and chunk like any other."""

    @staticmethod
    def rendered_options(tmp_path: Path, segmentation_batch: int) -> dict:
        from bgblur.runtimes.select import runtime_options
        from bgblur.server.launcher import render_model_repository
        from bgblur.server.model_config import read_model_config

        repository = render_model_repository(
            tmp_path / "repo", device="gpu", gpus=[0], segmentation_batch=segmentation_batch
        )
        config = read_model_config(repository / "segmentation" / "config.pbtxt")
        parameters = {k: v.string_value for k, v in config.parameters.items()}
        return runtime_options(parameters, config.max_batch_size)

    @pytest.mark.parametrize(
        ("segmentation_batch", "sizes"),
        [(64, (1, 2, 4, 8, 16, 32, 64)), (16, (1, 2, 4, 8, 16)), (24, (1, 2, 4, 8, 16, 24))],
    )
    def test_the_rendered_config_gives_a_bucket_up_to_the_batch(
        self, tmp_path: Path, segmentation_batch: int, sizes: tuple[int, ...]
    ) -> None:
        options = self.rendered_options(tmp_path, segmentation_batch)
        assert options["torch_options"]["batch_sizes"] == sizes

    @pytest.mark.parametrize(("batch", "fed"), [(24, [32]), (40, [64]), (64, [64]), (72, [64, 8])])
    def test_merged_batches_pad_to_the_next_bucket(
        self, rng: np.random.Generator, batch: int, fed: list[int]
    ) -> None:
        module = RecordingSigmoid()
        runtime = TorchRuntime(
            spec_for(module), Device("cpu"), batch_sizes=(1, 2, 4, 8, 16, 32, 64), bucketed=True
        )
        x = rng.standard_normal((batch, 3, 7, 13)).astype(np.float16)
        out = runtime(x)
        assert [t.shape[0] for t in module.seen] == fed
        np.testing.assert_allclose(out.astype(np.float32), weighted_sigmoid_reference(x), atol=1e-3)

    @pytest.mark.gpu
    def test_graphs_up_to_64_equal_eager_on_the_gpu(self, selfie_on_gpu: dict) -> None:
        spec, eager = selfie_on_gpu["spec"], selfie_on_gpu["eager"]
        sizes = (1, 2, 4, 8, 16, 32, 64)
        graphs = TorchRuntime(spec, Device("gpu", 0), batch_sizes=sizes)
        assert graphs.captures == len(sizes)
        assert "CUDA graphs captured at load for batch 1,2,4,8,16,32,64" in graphs.describe()
        for batch in (16, 40, 64, 72):
            gen = torch.Generator(device="cuda").manual_seed(batch)
            x = torch.rand((batch, 3, *spec.input_hw), device="cuda", generator=gen).half()
            got, want = graphs(x), eager(x)
            assert got.shape == want.shape == (batch, 1, *spec.input_hw)
            diff = (got.float() - want.float()).abs()
            assert float(diff.max()) <= 0.05 and float(diff.mean()) <= 1e-3, batch
