"""The PyTorch port of MediaPipe's selfie segmentation (bgblur.models.selfie) and its TFLite reader.

Needs the converted weights: the session fixture fetches them into ``$BGBLUR_CACHE`` when set
(nothing is downloaded if they are already there), else into a temporary directory, which
downloads the mediapipe wheel (~36 MB) with pip once per session.

References:
* MediaPipe's own output (goldens in tests/data/, made by tests/data/make_selfie_goldens.py with
  mediapipe 0.10.14): mean abs diff <= 0.01 and IoU of the 0.5 masks >= 0.99.
* A literal NumPy float64 evaluation of the ``.tflite`` graph (TFLite kernel semantics, written
  independently of the module): checks the wiring, weight layouts and padding to ~1e-9.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bgblur.errors import ModelUnavailableError
from bgblur.models import selfie
from bgblur.models.selfie import (
    SELFIE_MEAN,
    SELFIE_STD,
    SELFIE_VARIANTS,
    SelfieSegmentation,
    TFConv2d,
    TransposeConvBias,
    build_selfie_segmentation,
    convert_tflite,
    fetch_selfie_weights,
)
from bgblur.models.tflite_flatbuffer import TFLiteFormatError, parse_tflite, read_tflite

DATA = Path(__file__).resolve().parents[1] / "data"
MAD_MAX = 0.01
IOU_MIN = 0.99


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("BGBLUR_CACHE")
    path = Path(env).expanduser() if env else tmp_path_factory.mktemp("bgblur-cache")
    for variant in SELFIE_VARIANTS:
        fetch_selfie_weights(path, variant)
    return path


@pytest.fixture(scope="session")
def models(cache_dir: Path) -> dict[str, SelfieSegmentation]:
    return {v: build_selfie_segmentation(v, cache_dir=cache_dir) for v in SELFIE_VARIANTS}


def _load_goldens_module():
    spec = importlib.util.spec_from_file_location(
        "make_selfie_goldens", DATA / "make_selfie_goldens.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GOLDENS = _load_goldens_module()
GOLDEN_META = json.loads((DATA / "selfie_goldens.json").read_text())


def _to_input(images_rgb: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 RGB (or a list) -> [B, 3, H, W] float32, normalized like the preprocess stage."""
    batch = np.stack(images_rgb) if isinstance(images_rgb, list) else images_rgb[None]
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
    mean = torch.tensor(SELFIE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SELFIE_STD).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    fa, fb = a > 0.5, b > 0.5
    union = np.logical_or(fa, fb).sum()
    return 1.0 if union == 0 else float(np.logical_and(fa, fb).sum() / union)


@torch.inference_mode()
def _predict(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    y = model(x)
    return (y if y.dtype == torch.float64 else y.float()).cpu().numpy()


def _golden(name: str) -> tuple[str, np.ndarray, np.ndarray]:
    """(variant, input image, MediaPipe mask as float in [0, 1]) of a golden."""
    entry = GOLDEN_META["goldens"][name]
    variant, img = GOLDENS.golden_inputs()[name]
    assert variant == entry["variant"]
    assert GOLDENS.sha256(img) == entry["input_sha256"], (
        f"{name}: the rebuilt input differs from the one the golden was made from "
        "(scikit-image's sample image changed?)"
    )
    mask = cv2.imread(str(DATA / entry["mask"]), cv2.IMREAD_UNCHANGED)
    assert mask is not None and mask.dtype == np.uint8 and mask.shape == img.shape[:2]
    return variant, img, mask.astype(np.float32) / 255.0


# --------------------------------------------------------------------------------------------
# Literal NumPy float64 TFLite kernels (NHWC), for the independent reference
# --------------------------------------------------------------------------------------------


def _np_conv(x, w, b, stride: int, padding: str, depthwise: bool) -> np.ndarray:
    """CONV_2D (w OHWI) / DEPTHWISE_CONV_2D (w 1HWC) with TensorFlow padding."""
    _, h, wd, _ = x.shape
    kh, kw = w.shape[1:3]
    if padding == "SAME":
        oh, ow = -(-h // stride), -(-wd // stride)
        ph = max((oh - 1) * stride + kh - h, 0)
        pw = max((ow - 1) * stride + kw - wd, 0)
    else:
        oh, ow, ph, pw = (h - kh) // stride + 1, (wd - kw) // stride + 1, 0, 0
    xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))
    win = win[:, ::stride, ::stride][:, :oh, :ow]  # N, oh, ow, C, kh, kw
    if depthwise:
        return np.einsum("nhwcij,ijc->nhwc", win, w[0]) + b
    return np.einsum("nhwcij,oijc->nhwo", win, w) + b


def _np_transpose_conv_bias(x, w, b, stride: int, padding: str) -> np.ndarray:
    """mediapipe/util/tflite/operations/transpose_conv_bias.cc, vectorized over pixels."""
    n, h, wd, _ = x.shape
    o, kh, kw, _ = w.shape
    ph = max(0, kh - (h - 1) % stride - 1) if padding == "SAME" else 0
    pw = max(0, kw - (wd - 1) % stride - 1) if padding == "SAME" else 0
    oh, ow = stride * (h - 1) + kh - ph, stride * (wd - 1) + kw - pw
    out = np.broadcast_to(b, (n, oh, ow, o)).copy()
    iy, ix = np.arange(h), np.arange(wd)
    for fy in range(kh):
        for fx in range(kw):
            oy, ox = iy * stride - ph // 2 + fy, ix * stride - pw // 2 + fx
            vy, vx = (oy >= 0) & (oy < oh), (ox >= 0) & (ox < ow)
            contrib = np.einsum("nhwc,oc->nhwo", x[:, vy][:, :, vx], w[:, fy, fx, :])
            out[:, oy[vy][:, None], ox[vx][None, :], :] += contrib
    return out


def _np_resize_bilinear_half_pixel(x, oh: int, ow: int) -> np.ndarray:
    """RESIZE_BILINEAR(align_corners=False, half_pixel_centers=True), TFLite reference_ops."""

    def axis(out_size: int, in_size: int):
        v = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
        lo = np.maximum(np.floor(v), 0).astype(int)
        hi = np.minimum(np.ceil(v), in_size - 1).astype(int)
        return lo, hi, v - lo

    y0, y1, dy = axis(oh, x.shape[1])
    x0, x1, dx = axis(ow, x.shape[2])
    dy, dx = dy[None, :, None, None], dx[None, None, :, None]
    top = x[:, y0][:, :, x0] * (1 - dx) + x[:, y0][:, :, x1] * dx
    bottom = x[:, y1][:, :, x0] * (1 - dx) + x[:, y1][:, :, x1] * dx
    return top * (1 - dy) + bottom * dy


def _run_tflite_graph(path: Path, x_nhwc: np.ndarray) -> np.ndarray:
    """Evaluate the .tflite graph op by op in float64."""
    graph = read_tflite(path).main
    values: dict[int, np.ndarray] = {graph.inputs[0]: x_nhwc.astype(np.float64)}

    def get(i: int) -> np.ndarray:
        return values[i] if i in values else graph.constant(i).astype(np.float64)

    for op in graph.operators:
        o = op.options
        if op.opcode == "DEQUANTIZE":
            continue  # constants: get() folds them
        a = get(op.inputs[0])
        if op.opcode in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            assert o["stride_w"] == o["stride_h"] and o["fused_activation_function"] == "NONE"
            y = _np_conv(
                a,
                get(op.inputs[1]),
                get(op.inputs[2]),
                o["stride_h"],
                o["padding"],
                op.opcode == "DEPTHWISE_CONV_2D",
            )
        elif op.opcode == "Convolution2DTransposeBias":
            padding, sw, sh = np.frombuffer(op.custom_options[:12], "<i4")
            assert sw == sh and padding in (1, 2)
            y = _np_transpose_conv_bias(
                a,
                get(op.inputs[1]),
                get(op.inputs[2]),
                int(sh),
                "SAME" if padding == 1 else "VALID",
            )
        elif op.opcode == "HARD_SWISH":
            y = a * np.clip(a + 3, 0, 6) / 6
        elif op.opcode == "RELU":
            y = np.maximum(a, 0)
        elif op.opcode == "LOGISTIC":
            y = 0.5 * (1 + np.tanh(0.5 * a))  # = 1 / (1 + exp(-a)), without overflow
        elif op.opcode == "ADD":
            y = a + get(op.inputs[1])
        elif op.opcode == "MUL":
            y = a * get(op.inputs[1])
        elif op.opcode == "AVERAGE_POOL_2D":
            assert (o["filter_height"], o["filter_width"]) == a.shape[1:3]
            y = a.mean(axis=(1, 2), keepdims=True)
        elif op.opcode == "MEAN":
            y = a.mean(axis=tuple(int(i) for i in get(op.inputs[1])), keepdims=o["keep_dims"])
        elif op.opcode == "RESIZE_BILINEAR":
            assert o["half_pixel_centers"] and not o["align_corners"]
            oh, ow = (int(v) for v in graph.constant(op.inputs[1]))
            y = _np_resize_bilinear_half_pixel(a, oh, ow)
        else:
            raise AssertionError(f"unexpected op {op.opcode}")
        assert y.shape[1:] == graph.tensors[op.outputs[0]].shape[1:], op
        values[op.outputs[0]] = y
    return values[graph.outputs[0]]


# --------------------------------------------------------------------------------------------
# API and errors (no weights needed)
# --------------------------------------------------------------------------------------------


def test_constants() -> None:
    assert SELFIE_VARIANTS == {"general": (256, 256), "landscape": (144, 256)}
    # MediaPipe feeds pixel / 255 (output_tensor_float_range [0, 1]).
    assert SELFIE_MEAN == (0.0, 0.0, 0.0)
    assert SELFIE_STD == (1.0, 1.0, 1.0)


def test_unknown_variant_is_a_clear_error(tmp_path: Path) -> None:
    for call in (
        lambda: SelfieSegmentation("portrait"),
        lambda: build_selfie_segmentation("portrait", cache_dir=tmp_path),
        lambda: fetch_selfie_weights(tmp_path, variant="portrait"),
    ):
        with pytest.raises(ValueError, match=r"unknown .*'portrait'.*general, landscape"):
            call()
    assert not any(tmp_path.iterdir())  # nothing downloaded or written


def test_download_failure_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd, **kwargs):
        assert (
            cmd[1:4] == ["-m", "pip", "download"]
            and f"mediapipe=={selfie.MEDIAPIPE_VERSION}" in cmd
        )
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (offline)")

    monkeypatch.setattr(selfie.subprocess, "run", fake_run)
    with pytest.raises(
        ModelUnavailableError, match=r"(?s)could not download.*offline.*--cache-dir"
    ):
        fetch_selfie_weights(tmp_path / "cache")
    assert not (tmp_path / "cache" / "selfie_general.pt").exists()


def test_layers_have_tflite_padding_semantics() -> None:
    """TFConv2d and TransposeConvBias against literal TFLite kernels, odd and even sizes."""
    gen = torch.Generator().manual_seed(0)
    for k, s, h, w in [(3, 2, 7, 8), (5, 2, 9, 6), (3, 1, 5, 5), (5, 2, 16, 18), (4, 2, 6, 7)]:
        conv = TFConv2d(4, 6, k, stride=s).double()
        dw = TFConv2d(4, 4, k, stride=s, groups=4).double()
        x = torch.randn(2, 4, h, w, generator=gen, dtype=torch.float64)
        x_nhwc = x.permute(0, 2, 3, 1).numpy()
        for layer, depthwise in ((conv, False), (dw, True)):
            torch.nn.init.normal_(layer.bias)
            wt = layer.weight.detach().numpy()
            w_tfl = wt.transpose(1, 2, 3, 0) if depthwise else wt.transpose(0, 2, 3, 1)
            ref = _np_conv(x_nhwc, w_tfl, layer.bias.detach().numpy(), s, "SAME", depthwise)
            got = layer(x).detach().permute(0, 2, 3, 1).numpy()
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10, err_msg=f"{k=} {s=} {h=} {w=}")
    for k, s, h, w in [(2, 2, 5, 6), (3, 2, 5, 4), (4, 2, 3, 3), (3, 1, 4, 5), (2, 2, 8, 8)]:
        for padding in ("SAME", "VALID"):
            tconv = TransposeConvBias(3, 2, k, stride=s, padding=padding).double()
            torch.nn.init.normal_(tconv.bias)
            x = torch.randn(1, 3, h, w, generator=gen, dtype=torch.float64)
            w_ohwi = tconv.weight.detach().numpy().transpose(1, 2, 3, 0)  # IOHW -> OHWI
            ref = _np_transpose_conv_bias(
                x.permute(0, 2, 3, 1).numpy(), w_ohwi, tconv.bias.detach().numpy(), s, padding
            )
            got = tconv(x).detach().permute(0, 2, 3, 1).numpy()
            assert got.shape == ref.shape, (k, s, h, w, padding)
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10)


def test_reader_rejects_non_tflite() -> None:
    with pytest.raises(TFLiteFormatError):
        parse_tflite(b"\x00" * 64)
    with pytest.raises(TFLiteFormatError):
        parse_tflite(b"PK\x03\x04")


# --------------------------------------------------------------------------------------------
# Reader and conversion on the real files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(SELFIE_VARIANTS))
def test_reader_on_selfie_tflite(cache_dir: Path, variant: str) -> None:
    path = cache_dir / f"selfie_{variant}.tflite"
    if not path.exists():
        pytest.skip(f"{path} not cached (only the .pt was provided)")
    model = read_tflite(path)
    graph = model.main
    h, w = SELFIE_VARIANTS[variant]
    assert model.version == 3 and len(model.subgraphs) == 1
    assert graph.tensors[graph.inputs[0]].shape == (1, h, w, 3)
    assert graph.tensors[graph.inputs[0]].type_name == "FLOAT32"
    assert graph.tensors[graph.outputs[0]].shape == (1, h, w, 1)
    assert graph.producer(graph.outputs[0]).opcode == "LOGISTIC"
    custom = [op for op in graph.operators if op.is_custom]
    assert [op.opcode for op in custom] == ["Convolution2DTransposeBias"]
    # TfLiteTransposeConvParams: padding kTfLitePaddingSame (1), stride_w 2, stride_h 2
    assert np.frombuffer(custom[0].custom_options, "<i4").tolist() == [1, 2, 2]
    first_conv = next(op for op in graph.operators if op.opcode == "CONV_2D")
    assert first_conv.options["padding"] == "SAME" and first_conv.options["stride_w"] == 2
    kernel = graph.tensors[graph.producer(first_conv.inputs[1]).inputs[0]]
    assert kernel.type_name == "FLOAT16" and kernel.data.dtype == np.float16
    folded = graph.constant(first_conv.inputs[1])
    assert folded.dtype == np.float32 and folded.shape == (16, 3, 3, 3)
    np.testing.assert_array_equal(folded, kernel.data.astype(np.float32))


@pytest.mark.parametrize("variant", list(SELFIE_VARIANTS))
def test_module_matches_literal_tflite_graph(
    cache_dir: Path, models: dict[str, SelfieSegmentation], variant: str
) -> None:
    """The explicit module == op-by-op NumPy evaluation of the .tflite graph (float64)."""
    path = cache_dir / f"selfie_{variant}.tflite"
    if not path.exists():
        pytest.skip(f"{path} not cached (only the .pt was provided)")
    state = convert_tflite(path)
    loaded = models[variant].state_dict()
    assert state.keys() == loaded.keys()
    assert all(torch.equal(state[k], loaded[k]) for k in state)
    img = GOLDENS.golden_inputs()[f"{variant}_astronaut"][1]
    x = _to_input(img).double()
    ref = _run_tflite_graph(path, x.permute(0, 2, 3, 1).numpy())
    model = SelfieSegmentation(variant).double()
    model.load_state_dict(state)
    got = _predict(model.eval(), x).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------
# Behaviour of the pretrained model
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(SELFIE_VARIANTS))
def test_shape_dtype_range(models: dict[str, SelfieSegmentation], variant: str) -> None:
    model = models[variant]
    h, w = SELFIE_VARIANTS[variant]
    assert not model.training and model.input_size == (h, w) and model.variant == variant
    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (2, 1, h, w) and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_batch_independence_and_determinism(models: dict[str, SelfieSegmentation]) -> None:
    inputs = GOLDENS.golden_inputs()
    images = [inputs[n][1] for n in ("general_astronaut", "general_camera", "general_synthetic")]
    model = models["general"]
    batch = _predict(model, _to_input(images))
    singles = np.concatenate([_predict(model, _to_input(img)) for img in images])
    # Same numbers up to float32 rounding (oneDNN/cuDNN may pick other kernels per batch size).
    np.testing.assert_allclose(batch, singles, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(batch, _predict(model, _to_input(images)))


@pytest.mark.parametrize("name", sorted(GOLDEN_META["goldens"]))
def test_matches_mediapipe_goldens(models: dict[str, SelfieSegmentation], name: str) -> None:
    variant, img, ref = _golden(name)
    prob = _predict(models[variant], _to_input(img))[0, 0]
    assert prob.shape == SELFIE_VARIANTS[variant]
    mad = float(np.abs(prob - ref).mean())
    iou = _iou(prob, ref)
    assert mad <= MAD_MAX, f"{name}: mean abs diff {mad:.5f}"
    assert iou >= IOU_MIN, f"{name}: IoU {iou:.5f}"
    # Stored as round(p * 255): a faithful port stays within that rounding (+ float noise).
    assert float(np.abs(prob - ref).max()) <= 1.0 / 255


def test_channels_last_fp16_cpu(models: dict[str, SelfieSegmentation]) -> None:
    _, img, ref = _golden("general_astronaut")
    x = _to_input(img)
    model = models["general"]
    base = _predict(model, x)
    cl = SelfieSegmentation("general").eval()
    cl.load_state_dict(model.state_dict())
    cl = cl.to(memory_format=torch.channels_last)
    np.testing.assert_allclose(
        _predict(cl, x.contiguous(memory_format=torch.channels_last)), base, atol=1e-5
    )
    half = cl.half()
    out = _predict(half, x.half().contiguous(memory_format=torch.channels_last))[0, 0]
    assert float(np.abs(out - ref).mean()) <= MAD_MAX and _iou(out, ref) >= IOU_MIN


def test_trace_and_export(models: dict[str, SelfieSegmentation]) -> None:
    model = models["landscape"]
    x = _to_input(GOLDENS.golden_inputs()["landscape_astronaut"][1]).repeat(2, 1, 1, 1)
    expected = _predict(model, x)
    with warnings.catch_warnings():  # jit.trace is deprecated in recent torch, still used
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, x)
    np.testing.assert_allclose(_predict(traced, x), expected, atol=1e-6)
    exported = torch.export.export(model, (x,))
    np.testing.assert_allclose(_predict(exported.module(), x), expected, atol=1e-6)


def test_onnx_export(models: dict[str, SelfieSegmentation], tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = models["general"]
    x = _to_input(GOLDENS.golden_inputs()["general_astronaut"][1])
    path = tmp_path / "selfie.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["p"], dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got, _predict(model, x), atol=1e-4)  # ORT kernels differ


def test_cli_fetch_uses_cache(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert selfie.main(["fetch", "--cache-dir", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert f"selfie_general: {cache_dir / 'selfie_general.pt'}" in out
    assert "selfie_landscape:" in out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_channels_last_and_graphs(models: dict[str, SelfieSegmentation]) -> None:
    names = sorted(n for n in GOLDEN_META["goldens"] if n.startswith("general_"))
    goldens = [_golden(n) for n in names]
    x = (
        _to_input([g[1] for g in goldens])
        .cuda()
        .half()
        .contiguous(memory_format=torch.channels_last)
    )
    model = SelfieSegmentation("general").eval()
    model.load_state_dict(models["general"].state_dict())
    model = model.cuda().half().to(memory_format=torch.channels_last)
    eager = _predict(model, x)
    for (_, _, ref), out in zip(goldens, eager[:, 0], strict=True):
        assert float(np.abs(out - ref).mean()) <= MAD_MAX and _iou(out, ref) >= IOU_MIN
    # CUDA graph capture and replay gives the eager result.
    static_x = x.clone()
    with torch.inference_mode():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            model(static_x)  # warm-up outside the graph
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = model(static_x)
        static_x.copy_(x.flip(0))
        graph.replay()
        torch.cuda.synchronize()
    np.testing.assert_allclose(static_y.float().cpu().numpy(), eager[::-1], atol=2e-3)
