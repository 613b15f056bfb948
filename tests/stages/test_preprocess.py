"""Preprocess on the CPU: frames -> ``[B, 3, h, w]`` float16 network input of the spec's size and
normalization, checked against ``(cv2.resize(frame) / 255 - mean) / std``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from bgblur.device import Device
from bgblur.models.registry import SegmentationModelSpec, get_model_spec
from bgblur.stages.preprocess import Preprocess, resolve_interpolation


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240617)


@pytest.fixture
def preprocess() -> Preprocess:
    return Preprocess(get_model_spec("fixed_ellipse"), Device("cpu"))


def reference(frames: np.ndarray, out_hw: tuple[int, int], mean: tuple, std: tuple) -> np.ndarray:
    h, w = out_hw
    result = []
    for frame in frames:
        resized = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float64)
        result.append(((resized / 255 - np.array(mean)) / np.array(std)).transpose(2, 0, 1))
    return np.stack(result)


class TestPreprocess:
    @pytest.mark.parametrize("batch", [1, 3])
    @pytest.mark.parametrize("hw", [(1, 1), (7, 13), (512, 512)])
    def test_fixed_ellipse_input_is_batch_x_3_x_64_x_64_float16(
        self, preprocess: Preprocess, rng: np.random.Generator, batch: int, hw: tuple[int, int]
    ) -> None:
        frames = rng.integers(0, 256, (batch, *hw, 3), dtype=np.uint8)
        out = preprocess(frames)
        assert isinstance(out, np.ndarray)
        assert out.shape == (batch, 3, 64, 64)
        assert out.dtype == np.float16

    def test_fixed_ellipse_input_is_the_resized_frame_scaled_to_minus_one_to_one(
        self, preprocess: Preprocess, astronaut_frames: np.ndarray
    ) -> None:
        out = preprocess(astronaut_frames)
        expected = reference(astronaut_frames, (64, 64), (0.5,) * 3, (0.5,) * 3)
        np.testing.assert_allclose(out.astype(np.float64), expected, atol=1e-3)
        assert out.min() >= -1.0 and out.max() <= 1.0

    def test_black_and_white_frames_give_minus_one_and_one(self, preprocess: Preprocess) -> None:
        frames = np.zeros((2, 7, 13, 3), np.uint8)
        frames[1] = 255
        out = preprocess(frames)
        assert (out[0] == -1.0).all()
        assert (out[1] == 1.0).all()

    def test_a_non_square_spec_gives_its_height_and_width_and_per_channel_normalization(
        self,
    ) -> None:
        spec = SegmentationModelSpec(
            name="test_spec",
            input_hw=(9, 17),
            mean=(0.1, 0.2, 0.3),
            std=(0.5, 0.25, 2.0),
            weights="none",
            build=lambda cache_dir: None,  # type: ignore[arg-type,return-value]
        )
        frames = skimage.data.chelsea()[None]
        out = Preprocess(spec, Device("cpu"))(frames)
        assert out.shape == (1, 3, 9, 17)
        expected = reference(frames, (9, 17), spec.mean, spec.std)
        np.testing.assert_allclose(out.astype(np.float64), expected, atol=4e-3)

    def test_noncontiguous(self, preprocess: Preprocess, astronaut_frames: np.ndarray) -> None:
        frames = astronaut_frames[:, 1::3, ::-2]
        assert not frames.flags.c_contiguous
        out = preprocess(frames)
        expected = reference(np.ascontiguousarray(frames), (64, 64), (0.5,) * 3, (0.5,) * 3)
        np.testing.assert_allclose(out.astype(np.float64), expected, atol=1e-3)

    def test_leaves_the_frames_untouched(
        self, preprocess: Preprocess, rng: np.random.Generator
    ) -> None:
        frames = rng.integers(0, 256, (3, 7, 13, 3), dtype=np.uint8)
        before = frames.copy()
        preprocess(frames)
        np.testing.assert_array_equal(frames, before)

    def test_exception_when_a_cpu_stage_gets_something_else_than_numpy(
        self, preprocess: Preprocess
    ) -> None:
        with pytest.raises(TypeError, match="a CPU stage got a list"):
            preprocess([[[[0, 0, 0]]]])


class TestDeviceFrames:
    """``with_device_frames``: the frames postprocess gets from the ensemble are the input frames,
    on the stage's device (one upload per request)."""

    def test_cpu_hands_the_input_frames_on_unchanged(
        self, preprocess: Preprocess, astronaut_frames: np.ndarray
    ) -> None:
        network_input, frames = preprocess.with_device_frames(astronaut_frames)
        assert frames is astronaut_frames
        np.testing.assert_array_equal(network_input, preprocess(astronaut_frames))

    @pytest.mark.gpu
    @pytest.mark.parametrize("source", ["host", "device"])
    def test_gpu_returns_the_frames_on_the_gpu(
        self, astronaut_frames: np.ndarray, source: str
    ) -> None:
        import cupy

        stage = Preprocess(get_model_spec("selfie_general"), Device("gpu", 0))
        frames_in = astronaut_frames if source == "host" else cupy.asarray(astronaut_frames)
        network_input, frames = stage.with_device_frames(frames_in)
        assert isinstance(frames, cupy.ndarray) and isinstance(network_input, cupy.ndarray)
        if source == "device":
            assert frames.data.ptr == frames_in.data.ptr  # no copy when already there
        np.testing.assert_array_equal(cupy.asnumpy(frames), astronaut_frames)
        np.testing.assert_array_equal(
            cupy.asnumpy(network_input), cupy.asnumpy(stage(astronaut_frames))
        )


class TestInterpolationChoice:
    """``auto`` (the config default): area where it is cheap (GPU), linear where it is not."""

    @pytest.mark.parametrize(
        ("choice", "device", "resolved"),
        [
            ("auto", Device("cpu"), "linear"),
            ("auto", Device("gpu", 0), "area"),
            ("linear", Device("gpu", 0), "linear"),
            ("area", Device("cpu"), "area"),
        ],
    )
    def test_resolves_per_device(self, choice: str, device: Device, resolved: str) -> None:
        assert resolve_interpolation(choice, device) == resolved

    def test_a_cpu_stage_by_default_is_opencv_inter_linear(
        self, astronaut_frames: np.ndarray
    ) -> None:
        spec = get_model_spec("selfie_general")
        stage = Preprocess(spec, Device("cpu"))
        assert stage.interpolation == "linear"
        np.testing.assert_array_equal(
            stage(astronaut_frames),
            Preprocess(spec, Device("cpu"), interpolation="linear")(astronaut_frames),
        )

    @pytest.mark.parametrize("bad", ["bilinear", "", "AREA", "nearest"])
    def test_unknown_choices_are_refused(self, bad: str) -> None:
        with pytest.raises(ValueError, match="resize_interpolation must be one of"):
            Preprocess(get_model_spec("selfie_general"), Device("cpu"), interpolation=bad)

    @pytest.mark.gpu
    def test_a_gpu_stage_by_default_is_area(self, astronaut_frames: np.ndarray) -> None:
        import cupy

        spec = get_model_spec("selfie_general")
        stage = Preprocess(spec, Device("gpu", 0))
        assert stage.interpolation == "area"
        np.testing.assert_allclose(
            cupy.asnumpy(stage(astronaut_frames)).astype(np.float32),
            Preprocess(spec, Device("cpu"), interpolation="area")(astronaut_frames).astype(
                np.float32
            ),
            rtol=2**-10,
            atol=2**-14,
        )


class TestVarshape:
    def test_batches_of_different_sizes_equal_each_alone(
        self, preprocess: Preprocess, rng: np.random.Generator
    ) -> None:
        batches = [
            rng.integers(0, 256, (2, 90, 160, 3), dtype=np.uint8),
            rng.integers(0, 256, (1, 7, 5, 3), dtype=np.uint8),
            rng.integers(0, 256, (3, 90, 160, 3), dtype=np.uint8),
        ]
        network_input, frames = preprocess.with_device_frames_varshape(batches)
        assert [f is b for f, b in zip(frames, batches, strict=True)] == [True] * 3
        np.testing.assert_array_equal(
            network_input, np.concatenate([preprocess(b) for b in batches])
        )

    @pytest.mark.gpu
    @pytest.mark.parametrize("interpolation", ["linear", "area"])
    def test_gpu_batches_of_different_sizes_equal_the_cpu(
        self, rng: np.random.Generator, interpolation: str
    ) -> None:
        import cupy

        spec = get_model_spec("selfie_general")
        batches = [
            rng.integers(0, 256, (2, 1080, 1920, 3), dtype=np.uint8),
            rng.integers(0, 256, (1, 720, 1280, 3), dtype=np.uint8),
        ]
        gpu = Preprocess(spec, Device("gpu", 0), interpolation=interpolation)
        gpu_input, frames = gpu.with_device_frames_varshape(batches)
        cpu = Preprocess(spec, Device("cpu"), interpolation=interpolation)
        cpu_input, _ = cpu.with_device_frames_varshape(batches)
        assert all(isinstance(f, cupy.ndarray) for f in frames)
        # The same float32 arithmetic, rounded once to float16 (tests/ops: identical).
        np.testing.assert_allclose(
            cupy.asnumpy(gpu_input).astype(np.float32),
            cpu_input.astype(np.float32),
            rtol=2**-10,
            atol=2**-14,
        )


class TestWarmUp:
    """``warm_up`` (at model load) runs both paths once and leaves no state behind."""

    @pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
    def test_results_after_warm_up_equal_a_fresh_stage(
        self, device: str, rng: np.random.Generator
    ) -> None:
        spec = get_model_spec("selfie_general")
        warmed = Preprocess(spec, Device(device, 0))
        warmed.warm_up()
        batches = [
            rng.integers(0, 256, (2, 90, 160, 3), dtype=np.uint8),
            rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8),
        ]
        got, _ = warmed.with_device_frames_varshape(batches)
        want, _ = Preprocess(spec, Device(device, 0)).with_device_frames_varshape(batches)
        to_host = getattr(got, "get", lambda: got)
        np.testing.assert_array_equal(to_host(), getattr(want, "get", lambda: want)())

    @pytest.mark.gpu
    def test_gpu_warm_up_builds_the_kernels(self) -> None:
        import cupy

        from bgblur import kernels

        kernels.forget_compiled()
        Preprocess(get_model_spec("selfie_general"), Device("gpu", 0)).warm_up()
        assert ("resize", int(cupy.cuda.runtime.getDevice())) in kernels.compiled_modules()
