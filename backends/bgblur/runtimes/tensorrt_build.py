"""Build TensorRT engines (plans) of the segmentation networks and their Triton configs.

A plan is specific to the GPU architecture (compute capability) and the TensorRT version that
built it; the batch range of its one optimization profile and its precision are fixed at build
time. ``EngineKey`` holds all of that plus the model name and the SHA-256 of the ONNX file it
came from; the plan's file name (``EngineKey.file_name``, e.g.
``fcn_resnet101_sm90_trt10.3.0_b1-8_fp16.plan``) carries everything but the ONNX hash, so the
runtime selection (``bgblur.runtimes.select``) finds a plan from the model name and the machine
alone; the full key, hash included, is written beside it (``<plan>.json``) and a rebuild is
skipped only when it matches.

The engine's I/O is the Triton ``segmentation`` model's: ``NETWORK_INPUT`` float16 ``[B, 3, h,
w]`` -> ``PROBABILITY`` float16 ``[B, 1, h, w]``, ``1 <= B <= max_batch``, so the plan serves
the ``tensorrt_plan_config`` unchanged. Precision lives in the ONNX graph
(``bgblur.models.export``): an fp16 plan comes from the all-float16 export (``fp16=True``, what
TensorRT 11's strongly typed builder needs; TensorRT 10 also gets ``--fp16`` /
``BuilderFlag.FP16``), an fp32 plan from the float32 body behind a float16 interface
(``fp16_io=True``). The builder is told the I/O types as well (``--inputIOFormats=fp16:chw
--outputIOFormats=fp16:chw``; I/O tensor dtype ``float16`` in the Python API).

Two ways to build, same result: ``build_engine`` (TensorRT's Python builder, imported lazily) and
``trtexec_command`` (the argv of NVIDIA's ``trtexec``, present in the Triton and TensorRT
containers). Full TensorRT is not installable on every machine (no builder wheel on PyPI): then
``build_engine`` raises ``ModelUnavailableError`` saying so. The command line that builds the
plans is ``python -m bgblur.server.deploy build-engine`` (``build_for_model`` with trtexec, once
per GPU compute capability).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bgblur.errors import ModelUnavailableError

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "PLAN_DIR_ENV",
    "EngineKey",
    "build_engine",
    "build_for_model",
    "decode_trt_version",
    "default_opt_batch",
    "default_plan_dir",
    "find_plan",
    "gpu_compute_capability",
    "import_tensorrt",
    "onnx_sha256",
    "parse_plan_name",
    "tensorrt_plan_config",
    "tensorrt_version",
    "trtexec_command",
    "trtexec_version",
]

INPUT_NAME = "NETWORK_INPUT"
OUTPUT_NAME = "PROBABILITY"
PLAN_DIR_ENV = "BGBLUR_TRT_PLAN_DIR"
"""Environment variable naming the folder of built plans (``EngineKey.file_name`` names)."""

LOG = logging.getLogger(__name__)

_PLAN_NAME = re.compile(
    r"^(?P<model>.+)_sm(?P<sm>\d+)_trt(?P<trt>\d+(?:\.\d+)*)"
    r"_b(?P<min>\d+)-(?P<max>\d+)_(?P<precision>fp16|fp32)\.plan$"
)


# --------------------------------------------------------------------------------------------
# Versions, devices, keys
# --------------------------------------------------------------------------------------------


def import_tensorrt() -> Any:
    """The ``tensorrt`` module; ``ModelUnavailableError`` (with what to do) when it is absent."""
    try:
        import tensorrt
    except ImportError as exc:
        raise ModelUnavailableError(
            "TensorRT's Python package does not import here "
            f"({exc}); build engines where it is installed (the Triton or TensorRT container, "
            "nvcr.io/nvidia/tritonserver:<yy.mm>-py3), with its trtexec: "
            "python -m bgblur.server.deploy build-engine --model NAME --cache DIR"
        ) from exc
    return tensorrt


def _short_version(version: str) -> str:
    """``10.3.0.26`` -> ``10.3.0``: major.minor.patch (plans are tied to the release)."""
    parts = re.findall(r"\d+", version)
    if not parts:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return ".".join(parts[:3])


def tensorrt_version() -> str:
    """``major.minor.patch`` of the TensorRT Python package (``ModelUnavailableError`` without)."""
    return _short_version(import_tensorrt().__version__)


def decode_trt_version(code: int) -> str:
    """TensorRT's integer version (trtexec's banner ``[TensorRT v100300]``) -> ``10.3.0``.

    TensorRT 10 encodes ``major * 10000 + minor * 100 + patch``; 8.x and older
    ``major * 1000 + minor * 100 + patch`` (``8601`` is 8.6.1).
    """
    if code >= 100000:
        major, rest = divmod(code, 10000)
    else:
        major, rest = divmod(code, 1000)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


def trtexec_version(trtexec: str = "trtexec") -> str:
    """The TensorRT version of a ``trtexec`` binary, read from its banner."""
    exe = shutil.which(trtexec)
    if exe is None:
        raise ModelUnavailableError(f"{trtexec} not found on PATH")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120, check=False)
    match = re.search(r"TensorRT[. ]v?(\d{4,6})\b", proc.stdout + proc.stderr)
    if match is None:
        raise ModelUnavailableError(f"cannot read the TensorRT version from {exe} --help")
    return decode_trt_version(int(match.group(1)))


def gpu_compute_capability(index: int = 0) -> tuple[int, int]:
    """``(major, minor)`` of CUDA GPU ``index`` (torch, else CuPy, else nvidia-smi)."""
    try:
        import torch

        if torch.cuda.is_available():
            return tuple(torch.cuda.get_device_capability(index))  # type: ignore[return-value]
    except Exception:
        pass
    try:
        import cupy

        cc = cupy.cuda.Device(index).compute_capability  # e.g. "90"
        return int(cc[:-1]), int(cc[-1])
    except Exception:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        proc = subprocess.run(
            [smi, "-i", str(index), "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        match = re.match(r"\s*(\d+)\.(\d+)", proc.stdout)
        if proc.returncode == 0 and match:
            return int(match.group(1)), int(match.group(2))
    raise ModelUnavailableError(f"no CUDA GPU {index} found to read its compute capability")


def onnx_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class EngineKey:
    """What a plan depends on. Two builds with equal keys make interchangeable plans.

    Attributes:
        model: segmentation network name (``bgblur.models.registry``).
        compute_capability: ``(major, minor)`` of the GPU it was built on.
        trt_version: ``major.minor.patch`` of the TensorRT that built it.
        min_batch, opt_batch, max_batch: the optimization profile's batch range.
        fp16: reduced precision allowed (``--fp16``); I/O is float16 either way.
        input_hw: ``(h, w)`` of the network input.
        onnx_sha256: hash of the ONNX file (weights included).
    """

    model: str
    compute_capability: tuple[int, int]
    trt_version: str
    min_batch: int
    opt_batch: int
    max_batch: int
    fp16: bool
    input_hw: tuple[int, int]
    onnx_sha256: str

    def __post_init__(self) -> None:
        _check_batches(self.min_batch, self.opt_batch, self.max_batch)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.model):
            raise ValueError(f"model name {self.model!r} cannot name a file")

    @property
    def sm(self) -> str:
        """``sm90`` for compute capability 9.0."""
        major, minor = self.compute_capability
        return f"sm{major}{minor}"

    @property
    def file_name(self) -> str:
        """``<model>_sm<cc>_trt<version>_b<min>-<max>_<fp16|fp32>.plan``."""
        precision = "fp16" if self.fp16 else "fp32"
        return (
            f"{self.model}_{self.sm}_trt{_short_version(self.trt_version)}"
            f"_b{self.min_batch}-{self.max_batch}_{precision}.plan"
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EngineKey:
        data = json.loads(text)
        data["compute_capability"] = tuple(data["compute_capability"])
        data["input_hw"] = tuple(data["input_hw"])
        return cls(**data)


def parse_plan_name(name: str) -> dict[str, Any] | None:
    """The parts of an ``EngineKey.file_name`` (model, sm, trt, min_batch, max_batch,
    precision), or None when ``name`` is not one."""
    match = _PLAN_NAME.match(name)
    if match is None:
        return None
    parts: dict[str, Any] = match.groupdict()
    parts["min_batch"], parts["max_batch"] = int(parts.pop("min")), int(parts.pop("max"))
    return parts


def default_plan_dir() -> Path | None:
    """``$BGBLUR_TRT_PLAN_DIR`` when set, else None."""
    value = os.environ.get(PLAN_DIR_ENV)
    return Path(value).expanduser() if value else None


def find_plan(
    plan_dir: str | os.PathLike,
    model: str,
    compute_capability: tuple[int, int],
    trt_version: str,
    max_batch: int | None = None,
) -> Path | None:
    """The plan in ``plan_dir`` for ``model`` built on this GPU architecture and TensorRT
    version: fp16 before fp32; then, with ``max_batch`` (the batches the plan will run), the
    narrowest profile that covers it (a b1-8 plan for batches up to 8, a b1-64 one for 64: a
    profile is tuned for its own range), else the widest (larger batches run in chunks);
    without ``max_batch``, the widest. None when there is none."""
    folder = Path(plan_dir)
    if not folder.is_dir():
        return None
    sm = "sm{}{}".format(*compute_capability)
    version = _short_version(trt_version)
    found = []
    for path in folder.glob("*.plan"):
        parts = parse_plan_name(path.name)
        if (
            parts is not None
            and parts["model"] == model
            and f"sm{parts['sm']}" == sm
            and parts["trt"] == version
            and path.is_file()
        ):
            width = parts["max_batch"]
            covers = max_batch is None or width >= max_batch
            rank = -width if max_batch is not None and covers else width
            found.append((parts["precision"] == "fp16", covers, rank, path.name, path))
    return max(found)[-1] if found else None


def default_opt_batch(max_batch: int, min_batch: int = 1) -> int:
    """The profile's ``opt`` batch when none is given: 4 up to a max of 8 (the requests'
    batches), half the max above it (batches merged from several requests land between half
    and all of a large profile); never below ``min_batch``."""
    opt = min(4, max_batch) if max_batch <= 8 else max_batch // 2
    return max(opt, min_batch)


def _major(version: str) -> int:
    return int(_short_version(version).split(".")[0])


def _check_batches(min_batch: int, opt_batch: int, max_batch: int) -> None:
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(
            "batch sizes must satisfy 1 <= min_batch <= opt_batch <= max_batch, got "
            f"{min_batch}, {opt_batch}, {max_batch}"
        )


def _shape(batch: int, input_hw: tuple[int, int]) -> str:
    h, w = input_hw
    return f"{INPUT_NAME}:{batch}x3x{h}x{w}"


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def trtexec_command(
    onnx: str | os.PathLike,
    plan: str | os.PathLike,
    *,
    fp16: bool = True,
    min_batch: int = 1,
    opt_batch: int = 4,
    max_batch: int = 8,
    input_hw: tuple[int, int],
    fp16_io: bool = True,
    workspace_mib: int | None = None,
    timing_cache: str | os.PathLike | None = None,
    trt_version: str | None = None,
    trtexec: str = "trtexec",
) -> list[str]:
    """The ``trtexec`` argv that builds ``plan`` from ``onnx`` (one profile, batch
    ``min..max``, optimized for ``opt``) without running inference.

    ``fp16`` adds ``--fp16`` for TensorRT 10 and older (``trt_version`` None means 10.x, the
    release in Triton 2.51's container); TensorRT 11 removed the flag (strong typing: the
    float16 ONNX graph is the precision), so it is left out there.
    """
    _check_batches(min_batch, opt_batch, max_batch)
    argv = [
        trtexec,
        f"--onnx={onnx}",
        f"--saveEngine={plan}",
        f"--minShapes={_shape(min_batch, input_hw)}",
        f"--optShapes={_shape(opt_batch, input_hw)}",
        f"--maxShapes={_shape(max_batch, input_hw)}",
    ]
    if fp16 and (trt_version is None or _major(trt_version) < 11):
        argv.append("--fp16")
    if fp16_io:
        argv += ["--inputIOFormats=fp16:chw", "--outputIOFormats=fp16:chw"]
    if workspace_mib is not None:
        argv.append(f"--memPoolSize=workspace:{int(workspace_mib)}M")
    if timing_cache is not None:
        argv.append(f"--timingCacheFile={timing_cache}")
    argv.append("--skipInference")
    return argv


def build_engine(
    onnx: str | os.PathLike,
    plan: str | os.PathLike,
    *,
    fp16: bool = True,
    min_batch: int = 1,
    opt_batch: int = 4,
    max_batch: int = 8,
    input_hw: tuple[int, int],
    fp16_io: bool = True,
    workspace_bytes: int | None = None,
    timing_cache: str | os.PathLike | None = None,
) -> Path:
    """Build ``plan`` from ``onnx`` with TensorRT's Python builder (the same engine as
    ``trtexec_command``); returns the plan's path (written atomically).

    Raises:
        ModelUnavailableError: TensorRT does not import here.
        RuntimeError: the ONNX parser or the builder failed (their messages included).
    """
    _check_batches(min_batch, opt_batch, max_batch)
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = _major(str(trt.__version__))
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx}: {errors}")
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    outputs = {
        network.get_output(i).name: network.get_output(i) for i in range(network.num_outputs)
    }
    if set(inputs) != {INPUT_NAME} or set(outputs) != {OUTPUT_NAME}:
        raise RuntimeError(
            f"{onnx} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; expected "
            f"[{INPUT_NAME!r}] and [{OUTPUT_NAME!r}] (export with bgblur.models.export)"
        )
    if fp16_io:  # the ONNX export already says float16; older exports may not
        for tensor in (inputs[INPUT_NAME], outputs[OUTPUT_NAME]):
            if tensor.dtype != trt.float16:
                tensor.dtype = trt.float16

    config = builder.create_builder_config()
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if fp16 and hasattr(trt.BuilderFlag, "FP16"):  # TensorRT <= 10 (weak typing)
        config.set_flag(trt.BuilderFlag.FP16)
    h, w = input_hw
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (min_batch, 3, h, w), (opt_batch, 3, h, w), (max_batch, 3, h, w))
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(blob), False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx} (see its log)")
    plan = Path(plan)
    _atomic_write(plan, bytes(serialized))
    if cache_path is not None:
        _atomic_write(cache_path, bytes(config.get_timing_cache().serialize()))
    LOG.info("built %s", plan)
    return plan


def _atomic_write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# --------------------------------------------------------------------------------------------
# Triton
# --------------------------------------------------------------------------------------------


def tensorrt_plan_config(
    model_name: str,
    input_hw: tuple[int, int],
    max_batch: int,
    *,
    name: str = "segmentation",
    preferred_batch_sizes: tuple[int, ...] | None = None,
    max_queue_delay_microseconds: int = 200,
    instance_count: int = 1,
    plan_filename: str = "model.plan",
) -> str:
    """``config.pbtxt`` text serving a plan of ``model_name`` as Triton model ``name``.

    Platform ``tensorrt_plan``; the tensors of ``model_repository/segmentation/config.pbtxt``
    (``NETWORK_INPUT`` TYPE_FP16 ``[3, h, w]`` -> ``PROBABILITY`` TYPE_FP16 ``[1, h, w]``) with
    the plan's fixed ``h, w``; ``max_batch_size`` the plan's max batch; dynamic batching; one
    ``KIND_GPU`` instance group. The plan goes in ``<name>/1/<plan_filename>``.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    h, w = input_hw
    if preferred_batch_sizes is None:
        preferred_batch_sizes = tuple(sorted({min(4, max_batch), max_batch}))
    if any(not 1 <= b <= max_batch for b in preferred_batch_sizes):
        raise ValueError(f"preferred batch sizes {preferred_batch_sizes} not in [1, {max_batch}]")
    preferred = ", ".join(str(b) for b in preferred_batch_sizes)
    return (
        f"# {model_name} as a TensorRT plan (bgblur.runtimes.tensorrt_build): same tensors as\n"
        "# the Python-backend segmentation model, fixed network input size.\n"
        f'name: "{name}"\n'
        'platform: "tensorrt_plan"\n'
        f"max_batch_size: {max_batch}\n"
        f'default_model_filename: "{plan_filename}"\n'
        "input [\n"
        f'  {{ name: "{INPUT_NAME}", data_type: TYPE_FP16, dims: [ 3, {h}, {w} ] }}\n'
        "]\n"
        "output [\n"
        f'  {{ name: "{OUTPUT_NAME}", data_type: TYPE_FP16, dims: [ 1, {h}, {w} ] }}\n'
        "]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {preferred} ]\n"
        f"  max_queue_delay_microseconds: {max_queue_delay_microseconds}\n"
        "}\n"
        f"instance_group [ {{ kind: KIND_GPU, count: {instance_count} }} ]\n"
        "parameters [\n"
        f'  {{ key: "segmentation_model", value: {{ string_value: "{model_name}" }} }}\n'
        "]\n"
    )


# --------------------------------------------------------------------------------------------
# The whole job: export, build, config
# --------------------------------------------------------------------------------------------


def build_for_model(
    model: str,
    out_dir: str | os.PathLike,
    *,
    use_trtexec: bool = False,
    dry_run: bool = False,
    fp16: bool = True,
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int = 8,
    weights: str | os.PathLike | None = None,
    cache_dir: Path | None = None,
    compute_capability: tuple[int, int] | None = None,
    trt_version: str | None = None,
    triton_model_dir: str | os.PathLike | None = None,
    force: bool = False,
    trtexec: str = "trtexec",
) -> dict[str, Any]:
    """Export ``model`` to ``<out_dir>/<model>.onnx`` (dynamic batch; the float16 graph for an
    fp16 plan, ``<model>_fp32.onnx`` with a float32 body and float16 I/O otherwise), build
    ``<out_dir>/<EngineKey.file_name>`` (skipped when the plan and its ``.json`` key are
    current), write ``<out_dir>/<model>.config.pbtxt``, and, with ``triton_model_dir``, a Triton
    model folder (``config.pbtxt``, ``1/model.plan``). ``dry_run`` stops before TensorRT and
    reports the trtexec argv. ``opt_batch`` None: ``default_opt_batch(max_batch)``. Returns
    what was done (paths, key, argv)."""
    from bgblur.models.export import export_onnx
    from bgblur.models.registry import get_model_spec

    if opt_batch is None:
        opt_batch = default_opt_batch(max_batch, min_batch)
    _check_batches(min_batch, opt_batch, max_batch)
    spec = get_model_spec(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if trt_version is None:
            trt_version = trtexec_version(trtexec) if use_trtexec else tensorrt_version()
        if compute_capability is None:
            compute_capability = gpu_compute_capability()
    except ModelUnavailableError as exc:
        raise ModelUnavailableError(
            f"{exc}\n(the plan's name needs the TensorRT version and the GPU's compute "
            "capability: pass trt_version and compute_capability to name a plan for another "
            "machine)"
        ) from exc
    onnx_path = export_onnx(
        model,
        out / f"{model}{'' if fp16 else '_fp32'}.onnx",
        fp16=fp16,
        fp16_io=not fp16,
        cache_dir=cache_dir,
        weights=weights,
    )
    key = EngineKey(
        model=model,
        compute_capability=compute_capability,
        trt_version=_short_version(trt_version),
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        fp16=fp16,
        input_hw=spec.input_hw,
        onnx_sha256=onnx_sha256(onnx_path),
    )
    plan = out / key.file_name
    sidecar = plan.with_name(plan.name + ".json")
    argv = trtexec_command(
        onnx_path,
        plan,
        fp16=fp16,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        input_hw=spec.input_hw,
        trt_version=key.trt_version,
        trtexec=trtexec,
    )
    config_text = tensorrt_plan_config(model, spec.input_hw, max_batch)
    (out / f"{model}.config.pbtxt").write_text(config_text)
    report: dict[str, Any] = {
        "onnx": str(onnx_path),
        "plan": str(plan),
        "key": dataclasses.asdict(key),
        "trtexec": argv,
        "built": False,
    }
    current = (
        plan.is_file()
        and sidecar.is_file()
        and EngineKey.from_json(sidecar.read_text()) == key
        and not force
    )
    if dry_run:
        return report
    if not current:
        if use_trtexec:
            if shutil.which(trtexec) is None:
                raise ModelUnavailableError(f"{trtexec} not found on PATH")
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            if proc.returncode != 0 or not plan.is_file():
                raise RuntimeError(
                    f"trtexec failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-4000:]}"
                )
        else:
            build_engine(
                onnx_path,
                plan,
                fp16=fp16,
                min_batch=min_batch,
                opt_batch=opt_batch,
                max_batch=max_batch,
                input_hw=spec.input_hw,
            )
        sidecar.write_text(key.to_json())
        report["built"] = True
    if triton_model_dir is not None:
        folder = Path(triton_model_dir)
        (folder / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plan, folder / "1" / "model.plan")
        (folder / "config.pbtxt").write_text(config_text)
        report["triton_model_dir"] = str(folder)
    return report
