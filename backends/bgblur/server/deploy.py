"""The Docker deployment: the container's TensorRT engine, its model repository and its server.

The image built from ``docker/Dockerfile`` runs these commands (``docker/compose.yaml`` wires
them as two services):

- ``build-engine`` (the one-shot ``engine-builder`` service): exports the segmentation network to
  ONNX (``bgblur.models.export``) and builds its TensorRT plan with the container's ``trtexec``
  (fp16, one batch profile ``min..opt..max``) into the plan cache (a named volume), once per
  distinct GPU compute capability visible. A plan is rebuilt only when its key changes
  (``bgblur.runtimes.tensorrt_build.EngineKey``: model, compute capability, TensorRT version,
  batch profile, precision, input size and the ONNX file's SHA-256); otherwise the build is
  skipped.
- ``render``: writes the container's model repository. It is the embedded server's repository
  (``bgblur.server.launcher.render_model_repository``, KIND_GPU), the one source of the ensemble, of
  preprocess and postprocess and of every tensor name, dtype, dim and batching setting, with one
  change: ``segmentation`` becomes a ``tensorrt_plan`` model
  (``tensorrt_build.tensorrt_plan_config``) holding the cached plan as ``1/model.plan``.
- ``serve``: ``render``, checks that ``/dev/shm`` is large enough (``shm_requirement``), then
  serves it as the embedded server is served (``bgblur.server.launcher.TritonServer``): the HTTP
  guard on :8000 in front of Triton's loopback HTTP port, the supervisor restarting Triton after
  a crash or a hang, the restricted APIs behind ``$BGBLUR_ADMIN_KEY``; SIGTERM drains and stops.
- ``shm-size``: prints the shared memory the Python backend needs, and how it was computed.

Tensor shapes across the ensemble: preprocess declares ``NETWORK_INPUT`` ``[3, -1, -1]``, the
plan ``[3, h, w]``. Triton accepts that at load (``ValidateTensorConsistency`` in the core's
``ensemble_utils.cc``: shapes must match *or one side has a wildcard*, checked at run time then),
and at run time the shapes agree by construction: preprocess resizes to the ``input_hw`` of the
same registry entry (``segmentation_model``) the plan was built from; the TensorRT backend would
refuse anything else with INVALID_ARG.

Command line::

    python -m bgblur.server.deploy build-engine --model M --cache /plans [--max-batch 8] [--force]
    python -m bgblur.server.deploy render --model M --plans /plans --out /models [--check]
    python -m bgblur.server.deploy serve --model M --plans /plans --out DIR [--dry-run] \
        [--max-batch 64] [--mps] [-- TRITON_ARGS]
    python -m bgblur.server.deploy shm-size [--gpus 1] [--max-batch 8] [--model M]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bgblur.errors import ModelUnavailableError
from bgblur.parameters import CUDA_POOL_MB, MAX_FRAME_LONG_SIDE, MAX_FRAME_SHORT_SIDE
from bgblur.server.launcher import ServerOptions, TritonServer, serve_until_signal
from bgblur.server.model_config import parse_model_config, read_model_config, write_model_config

__all__ = [
    "ADMIN_KEY_HEADER",
    "RENDER_MARKER",
    "GpuInfo",
    "ShmEstimate",
    "build_engines",
    "build_parser",
    "check_repository",
    "container_server_options",
    "find_trtexec",
    "parse_size",
    "render_container_repository",
    "shm_requirement",
    "visible_gpus",
]

LOG = logging.getLogger("bgblur.server.deploy")

MODEL_SOURCE_ENV = "BGBLUR_MODEL_SOURCE"
"""Folder of the source model repository (the image sets it; default: the checkout's)."""
SHM_CHECK_ENV = "BGBLUR_SHM_CHECK"
TRTEXEC_FALLBACKS = ("/usr/src/tensorrt/bin/trtexec", "/opt/tensorrt/bin/trtexec")
RENDER_MARKER = ".bgblur-rendered"
ADMIN_KEY_HEADER = "bgblur-admin-key"
SEGMENTATION = "segmentation"
ENSEMBLE = "background_blur"
DEFAULT_CUDA_POOL_MB = CUDA_POOL_MB
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
_LOCK_NAME = ".bgblur-build.lock"


# --------------------------------------------------------------------------------------------
# GPUs and tools of the container
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GpuInfo:
    """A GPU visible in the container: CUDA-visible ``index``, ``uuid`` (what
    ``CUDA_VISIBLE_DEVICES`` accepts unambiguously; None: do not pin) and ``(major, minor)``
    compute capability."""

    index: int
    uuid: str | None
    compute_capability: tuple[int, int]

    @property
    def cc(self) -> str:
        """``"9.0"``: Triton's ``cc_model_filenames`` key."""
        return "{}.{}".format(*self.compute_capability)


def visible_gpus(nvidia_smi: str = "nvidia-smi") -> list[GpuInfo]:
    """The GPUs this container sees (``nvidia-smi``, else CuPy); empty when there are none."""
    exe = shutil.which(nvidia_smi)
    if exe is not None:
        proc = subprocess.run(
            [exe, "--query-gpu=index,uuid,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode == 0:
            gpus = []
            for line in proc.stdout.splitlines():
                match = re.fullmatch(r"\s*(\d+)\s*,\s*([^,\s]+)\s*,\s*(\d+)\.(\d+)\s*", line)
                if match:
                    index, uuid, major, minor = match.groups()
                    gpus.append(GpuInfo(int(index), uuid, (int(major), int(minor))))
            if gpus:
                return gpus
        LOG.warning("%s gave no GPUs (exit %d): %s", exe, proc.returncode, proc.stderr.strip())
    try:
        import cupy

        count = int(cupy.cuda.runtime.getDeviceCount())
        found = []
        for index in range(count):
            cc = cupy.cuda.Device(index).compute_capability  # "90"
            found.append(GpuInfo(index, str(index), (int(cc[:-1]), int(cc[-1]))))
        return found
    except Exception:  # no CuPy, no driver, no device
        return []


def find_trtexec(explicit: str | None = None) -> str:
    """``explicit``, else ``trtexec`` on PATH, else where NVIDIA's containers keep it."""
    candidates = [explicit] if explicit else ["trtexec", *TRTEXEC_FALLBACKS]
    for candidate in candidates:
        exe = shutil.which(candidate)
        if exe is not None:
            return exe
    raise ModelUnavailableError(
        f"trtexec not found (tried {', '.join(candidates)}): build engines in the Triton "
        "container (docker/Dockerfile), whose TensorRT is the one that will load the plan"
    )


# --------------------------------------------------------------------------------------------
# Engine cache
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _build_lock(cache: Path) -> Iterator[None]:
    """One builder at a time per cache (two ``compose up`` at once, or ``--scale``)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / _LOCK_NAME).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _visible_device(uuid: str | None) -> Iterator[None]:
    """``CUDA_VISIBLE_DEVICES=uuid`` for the child processes started inside (trtexec)."""
    if uuid is None:
        yield
        return
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = uuid
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


def build_engines(
    model: str,
    cache: str | os.PathLike,
    *,
    gpus: Sequence[GpuInfo] | None = None,
    trtexec: str | None = None,
    trt_version: str | None = None,
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int = 8,
    fp16: bool = True,
    weights_cache: Path | None = None,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Make sure ``cache`` holds a current plan of ``model`` for every distinct compute
    capability among ``gpus`` (default: ``visible_gpus()``), building the missing or stale ones
    with ``trtexec`` on a GPU of that capability. Idempotent: a plan whose key
    (``EngineKey``, in ``<plan>.json``) matches is not rebuilt. Returns one report per compute
    capability (``tensorrt_build.build_for_model``'s, plus ``gpu``); ``built`` says whether
    trtexec ran. ``opt_batch`` None: ``tensorrt_build.default_opt_batch(max_batch)`` (4 for the
    default profile 1-8, 32 for 1-64: ``serve --max-batch 64`` batches segmentation up to 64).

    Raises:
        ModelUnavailableError: no GPU, no trtexec, or the TensorRT version is unreadable.
        RuntimeError: trtexec failed (its output tail in the message).
    """
    from bgblur.runtimes.tensorrt_build import build_for_model, trtexec_version

    gpus = list(visible_gpus() if gpus is None else gpus)
    if not gpus:
        raise ModelUnavailableError(
            "no GPU visible: a TensorRT engine is built on the GPU it will run on (compose: "
            "deploy.resources.reservations.devices, NVIDIA Container Toolkit on the host)"
        )
    exe = find_trtexec(trtexec)
    version = trt_version or trtexec_version(exe)
    reports = []
    cache = Path(cache).resolve()  # trtexec gets absolute paths
    with _build_lock(cache):
        done: set[tuple[int, int]] = set()
        for gpu in gpus:
            if gpu.compute_capability in done:
                continue
            done.add(gpu.compute_capability)
            with _visible_device(gpu.uuid):
                report = build_for_model(
                    model,
                    cache,
                    use_trtexec=True,
                    fp16=fp16,
                    min_batch=min_batch,
                    opt_batch=opt_batch,
                    max_batch=max_batch,
                    cache_dir=weights_cache,
                    compute_capability=gpu.compute_capability,
                    trt_version=version,
                    force=force,
                    trtexec=exe,
                )
            report["gpu"] = dataclasses.asdict(gpu)
            LOG.info(
                "%s for sm%d%d: %s",
                Path(report["plan"]).name,
                *gpu.compute_capability,
                "built" if report["built"] else "current (key matches), build skipped",
            )
            reports.append(report)
        _write_manifest(cache, model, version, reports)
    return reports


def _manifest_path(cache: Path, model: str) -> Path:
    return cache / f"{model}.deploy.json"


def _version3(version: str) -> str:
    return ".".join(re.findall(r"\d+", version)[:3])


def _write_manifest(cache: Path, model: str, version: str, reports: list[dict[str, Any]]) -> None:
    """``<model>.deploy.json``: the plans the last build-engine made or found current, by
    compute capability, so that the server serves exactly those (and not, say, an older plan
    with a wider batch profile that ``find_plan`` would prefer)."""
    plans = {GpuInfo(**r["gpu"]).cc: Path(r["plan"]).name for r in reports}
    text = json.dumps({"model": model, "trt_version": _version3(version), "plans": plans}, indent=2)
    tmp = _manifest_path(cache, model).with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, _manifest_path(cache, model))


def _plans_in_manifest(
    cache: Path, model: str, ccs: Sequence[tuple[int, int]], trt_version: str
) -> dict[tuple[int, int], Path] | None:
    """The plans ``_write_manifest`` recorded for ``ccs``, or None when it has not all of them
    (no manifest, another TensorRT version, a capability not built, a file gone)."""
    try:
        manifest = json.loads(_manifest_path(cache, model).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("model") != model or manifest.get("trt_version") != _version3(trt_version):
        return None
    found = {}
    for cc in ccs:
        name = manifest.get("plans", {}).get("{}.{}".format(*cc))
        if name is None or not (cache / name).is_file():
            return None
        found[cc] = cache / name
    return found


def plans_for(
    plan_dir: str | os.PathLike,
    model: str,
    compute_capabilities: Sequence[tuple[int, int]],
    trt_version: str,
) -> dict[tuple[int, int], Path]:
    """The cached plan of ``model`` for each compute capability (``tensorrt_build.find_plan``).

    Raises:
        ModelUnavailableError: one is missing (the message lists the plans that are there).
    """
    from bgblur.runtimes.tensorrt_build import find_plan

    found: dict[tuple[int, int], Path] = {}
    for cc in dict.fromkeys(compute_capabilities):
        plan = find_plan(plan_dir, model, cc, trt_version)
        if plan is None:
            present = sorted(p.name for p in Path(plan_dir).glob("*.plan"))
            raise ModelUnavailableError(
                f"no plan of {model} for sm{cc[0]}{cc[1]} and TensorRT {trt_version} in "
                f"{plan_dir} (present: {present or 'none'}); run "
                f"`python -m bgblur.server.deploy build-engine --model {model} --cache {plan_dir}` "
                "(the engine-builder service) first"
            )
        found[cc] = plan
    return found


# --------------------------------------------------------------------------------------------
# The container's model repository
# --------------------------------------------------------------------------------------------


def default_model_source() -> Path:
    """``$BGBLUR_MODEL_SOURCE`` (set in the image), else the checkout's ``model_repository``."""
    from bgblur.server.launcher import MODEL_REPOSITORY

    value = os.environ.get(MODEL_SOURCE_ENV)
    return Path(value) if value else MODEL_REPOSITORY


def _plans_from(
    plan_path_or_dir: Path,
    model: str,
    compute_capabilities: Sequence[tuple[int, int]] | None,
    trt_version: str | None,
) -> dict[tuple[int, int], Path]:
    from bgblur.runtimes.tensorrt_build import parse_plan_name, trtexec_version

    if plan_path_or_dir.is_file():
        parts = parse_plan_name(plan_path_or_dir.name)
        if parts is None:
            raise ValueError(
                f"{plan_path_or_dir.name} is not a plan name of bgblur.runtimes.tensorrt_build "
                "(<model>_sm<cc>_trt<version>_b<min>-<max>_<fp16|fp32>.plan)"
            )
        if parts["model"] != model:
            raise ValueError(f"{plan_path_or_dir.name} is a plan of {parts['model']}, not {model}")
        sm = parts["sm"]
        return {(int(sm[:-1]), int(sm[-1])): plan_path_or_dir}
    if not plan_path_or_dir.is_dir():
        raise ModelUnavailableError(f"plan cache {plan_path_or_dir} does not exist")
    if compute_capabilities is None:
        compute_capabilities = [g.compute_capability for g in visible_gpus()]
        if not compute_capabilities:
            raise ModelUnavailableError("no GPU visible to choose its plan")
    if trt_version is None:
        trt_version = trtexec_version(find_trtexec())
    ccs = list(dict.fromkeys(compute_capabilities))
    recorded = _plans_in_manifest(plan_path_or_dir, model, ccs, trt_version)
    return recorded or plans_for(plan_path_or_dir, model, ccs, trt_version)


def render_container_repository(
    dest: str | os.PathLike,
    *,
    segmentation_model: str,
    plan_path_or_dir: str | os.PathLike,
    max_batch: int = 8,
    gpus: Sequence[int] | None = None,
    compute_capabilities: Sequence[tuple[int, int]] | None = None,
    trt_version: str | None = None,
    source: Path | None = None,
    link: bool = False,
) -> Path:
    """Write the container's model repository into ``dest`` (which must not exist).

    ``launcher.render_model_repository`` renders ``source`` for KIND_GPU on ``gpus`` (default:
    every GPU CuPy sees) with ``segmentation_model``; then ``segmentation`` is replaced by a
    ``tensorrt_plan`` model: ``tensorrt_plan_config(segmentation_model, input_hw, max_batch)``
    and the plan as ``1/model.plan`` (copied, or symlinked with ``link``). With plans for more
    than one compute capability, each goes in as ``1/model_sm<cc>.plan`` and
    ``cc_model_filenames`` maps the capability to its file.

    ``plan_path_or_dir``: one plan file (its name says model and capability), or the plan cache:
    the plans ``build_engines`` last recorded there (``<model>.deploy.json``) for
    ``compute_capabilities`` (default: the visible GPUs') and ``trt_version`` (default: the
    container's trtexec's), else the best ``tensorrt_build.find_plan`` finds.

    ``max_batch`` is the plan model's ``max_batch_size``: the ensemble's (8) or more, when
    segmentation is to merge the requests of several clients into one batch (the plan's
    profile must cover it: ``build-engine --max-batch`` the same value).

    Raises:
        ValueError: a plan of another model, a batch range that does not cover the ensemble's
            ``max_batch_size``.
        ModelUnavailableError: unknown model, no plan for a capability, no GPU.
    """
    from bgblur.device import cuda_device_count
    from bgblur.models.registry import get_model_spec
    from bgblur.runtimes.tensorrt_build import parse_plan_name, tensorrt_plan_config
    from bgblur.server.launcher import (
        render_model_repository,
        segmentation_preferred_batch_sizes,
    )

    spec = get_model_spec(segmentation_model)
    source = default_model_source() if source is None else Path(source)
    ensemble_batch = read_model_config(source / ENSEMBLE / "config.pbtxt").max_batch_size
    if max_batch < ensemble_batch:
        raise ValueError(
            f"max_batch {max_batch} < the ensemble's max_batch_size {ensemble_batch}: Triton "
            "refuses an ensemble whose step batches less than the ensemble"
        )
    plans = _plans_from(Path(plan_path_or_dir), spec.name, compute_capabilities, trt_version)
    for plan in plans.values():
        parts = parse_plan_name(plan.name) or {}
        if parts.get("min_batch") != 1 or parts.get("max_batch", 0) < max_batch:
            raise ValueError(
                f"{plan.name}: its batch profile must cover 1..{max_batch} (the config's "
                f"max_batch_size); rebuild with --max-batch {max_batch}"
            )
    if gpus is None:
        gpus = list(range(cuda_device_count()))
        if not gpus:
            raise ModelUnavailableError("no GPU usable by CuPy: the container serves on GPUs")

    dest = render_model_repository(
        Path(dest),
        device="gpu",
        gpus=list(gpus),
        segmentation_model=spec.name,
        source=source,
    )
    folder = dest / SEGMENTATION
    version_dir = folder / "1"
    shutil.rmtree(version_dir)  # the Python backend's model.py: not used by a plan model
    version_dir.mkdir()
    files: dict[tuple[int, int], str] = {}
    for cc, plan in sorted(plans.items()):
        name = "model.plan" if len(plans) == 1 else "model_sm{}{}.plan".format(*cc)
        target = version_dir / name
        if link:
            target.symlink_to(plan.resolve())
        else:
            shutil.copyfile(plan, target)
        files[cc] = name
    # Above the ensemble's batch, segmentation merges requests: the same preferred sizes as the
    # Python model's (launcher.segmentation_preferred_batch_sizes); at it, the plan default.
    preferred = (
        segmentation_preferred_batch_sizes(max_batch, ensemble_batch)
        if max_batch > ensemble_batch
        else None
    )
    config = parse_model_config(
        tensorrt_plan_config(
            spec.name,
            spec.input_hw,
            max_batch,
            name=SEGMENTATION,
            preferred_batch_sizes=preferred,
        )
    )
    if len(files) > 1:
        for cc, name in files.items():
            config.cc_model_filenames[f"{cc[0]}.{cc[1]}"] = name
    sources = ", ".join(plan.name for plan in plans.values())
    write_model_config(
        folder / "config.pbtxt", config, f"Rendered by bgblur.server.deploy from {sources}."
    )
    (dest / RENDER_MARKER).write_text(json.dumps({"model": spec.name, "plans": sources}) + "\n")
    return dest


PYTHON_BACKEND_MODELS = ("preprocess", "postprocess")
"""The container's Python-backend models (their stubs pass tensors through ``/dev/shm``)."""


def python_models_max_batch(source: Path) -> int:
    """The largest ``max_batch_size`` of ``PYTHON_BACKEND_MODELS`` in the model repository
    ``source``: the batch ``shm_requirement`` is computed for."""
    return max(
        int(read_model_config(Path(source) / model / "config.pbtxt").max_batch_size)
        for model in PYTHON_BACKEND_MODELS
    )


def check_repository(repository: str | os.PathLike) -> dict[str, Any]:
    """Parse every ``config.pbtxt`` under ``repository`` as Triton does (protobuf text format)
    and check the ensemble's wiring: every step's model exists, each mapped input/output is
    declared by that model, and each ensemble tensor has one dtype wherever it appears. Returns
    ``{model name: ModelConfig}``.

    Raises:
        ValueError: listing every problem found.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repository = Path(repository)
    configs: dict[str, Any] = {}
    for path in sorted(repository.glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        if config.name != path.parent.name:
            raise ValueError(f"{path}: name {config.name!r} != folder {path.parent.name!r}")
        configs[config.name] = config
    problems: list[str] = []
    for ensemble in (c for c in configs.values() if c.platform == "ensemble"):
        dtypes: dict[str, set[int]] = {}
        for tensor in (*ensemble.input, *ensemble.output):
            dtypes.setdefault(tensor.name, set()).add(tensor.data_type)
        for step in ensemble.ensemble_scheduling.step:
            model = configs.get(step.model_name)
            if model is None:
                problems.append(f"{ensemble.name}: step model {step.model_name!r} missing")
                continue
            if model.max_batch_size < ensemble.max_batch_size:
                problems.append(
                    f"{step.model_name}: max_batch_size {model.max_batch_size} < the "
                    f"ensemble's {ensemble.max_batch_size}"
                )
            for kind, mapping, declared in (
                ("input", step.input_map, model.input),
                ("output", step.output_map, model.output),
            ):
                by_name = {t.name: t for t in declared}
                for own, tensor in mapping.items():
                    if own not in by_name:
                        problems.append(f"{step.model_name}: no {kind} {own!r}")
                        continue
                    dtypes.setdefault(tensor, set()).add(by_name[own].data_type)
        for tensor, types in sorted(dtypes.items()):
            if len(types) > 1:
                names = sorted(model_config_pb2.DataType.Name(t) for t in types)
                problems.append(f"{ensemble.name}: tensor {tensor!r} has dtypes {names}")
    if problems:
        raise ValueError(f"model repository {repository}: " + "; ".join(problems))
    return configs


# --------------------------------------------------------------------------------------------
# Shared memory of the Python backend
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShmEstimate:
    """What the Python backend may hold in ``/dev/shm`` at once, in bytes.

    Per GPU there is one instance of preprocess and one of postprocess (each its own stub process
    and shared-memory region); each runs one batch at a time, and both can be busy at once (the
    ensemble pipelines). Worst case, at the largest batch of the largest frames
    (``frames_bytes = max_batch * H * W * 3``):

    - preprocess: FRAMES in (client tensors reach the ensemble in host memory) +
      NETWORK_INPUT and FRAMES_ON_DEVICE (``frames_bytes``, the frames handed on to
      postprocess) out;
    - postprocess: FRAMES + PROBABILITY in, BLURRED (``frames_bytes``) + MASK
      (``frames_bytes / 3``) out. Outputs produced on the GPU go through shared memory only when
      Triton hands the backend a host buffer, which it does when its CUDA memory pool
      (``--cuda-memory-pool-byte-size``) is exhausted; counted anyway.

    ``total = ceil(per_gpu * gpus * headroom) + fixed`` (``fixed``: the stubs' control regions
    and default regions, 1 MiB per instance, rounded up generously).
    """

    gpus: int
    max_batch: int
    frame_hw: tuple[int, int]
    network_hw: tuple[int, int]
    frames_bytes: int
    preprocess_bytes: int
    postprocess_bytes: int
    per_gpu_bytes: int
    headroom: float
    fixed_bytes: int
    total_bytes: int

    def explain(self) -> str:
        h, w = self.frame_hw
        nh, nw = self.network_hw
        gib = 1 << 30
        return "\n".join(
            [
                f"frames: {self.max_batch} x {h}x{w}x3 uint8 = {self.frames_bytes:,} B",
                f"preprocess: FRAMES + NETWORK_INPUT ({self.max_batch}x3x{nh}x{nw} fp16) + "
                f"FRAMES_ON_DEVICE "
                f"= {self.preprocess_bytes:,} B",
                f"postprocess: FRAMES + PROBABILITY ({self.max_batch}x1x{nh}x{nw} fp16) + "
                f"BLURRED + MASK = {self.postprocess_bytes:,} B",
                f"per GPU: {self.per_gpu_bytes:,} B",
                f"total: ceil({self.per_gpu_bytes:,} x {self.gpus} GPU(s) x {self.headroom}) + "
                f"{self.fixed_bytes:,} = {self.total_bytes:,} B "
                f"({self.total_bytes / gib:.2f} GiB; shm_size >= "
                f"{math.ceil(self.total_bytes / gib)}gb)",
            ]
        )


def shm_requirement(
    *,
    gpus: int = 1,
    max_batch: int = 8,
    frame_hw: tuple[int, int] = (MAX_FRAME_SHORT_SIDE, MAX_FRAME_LONG_SIDE),
    network_hw: tuple[int, int] = (256, 256),
    headroom: float = 1.10,
    fixed_bytes: int = 64 << 20,
) -> ShmEstimate:
    """The ``/dev/shm`` size the Python-backend models need (see ``ShmEstimate``).

    Defaults: one GPU, the ensemble's max_batch_size 8, the largest frame the service accepts
    (``bgblur.parameters``: 7680x4320, either orientation: same bytes), selfie_general's input.
    Dynamic batching can gather 8 single-frame requests of that size into one batch, so the
    per-request byte cap (8 frames of 4K) does not bound a batch.
    """
    if gpus < 1 or max_batch < 1:
        raise ValueError(f"gpus and max_batch must be >= 1, got {gpus}, {max_batch}")
    h, w = frame_hw
    nh, nw = network_hw
    frames = max_batch * h * w * 3
    network_input = max_batch * 3 * nh * nw * 2
    probability = max_batch * nh * nw * 2
    preprocess = frames + network_input + frames
    postprocess = frames + probability + frames + frames // 3
    per_gpu = preprocess + postprocess
    total = math.ceil(per_gpu * gpus * headroom) + fixed_bytes
    return ShmEstimate(
        gpus=gpus,
        max_batch=max_batch,
        frame_hw=(h, w),
        network_hw=(nh, nw),
        frames_bytes=frames,
        preprocess_bytes=preprocess,
        postprocess_bytes=postprocess,
        per_gpu_bytes=per_gpu,
        headroom=headroom,
        fixed_bytes=fixed_bytes,
        total_bytes=total,
    )


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in a Docker size (``shm_size``): ``3gb``, ``512m``, ``1g``, ``65536``; k/m/g/t are
    powers of 1024, as Docker reads them."""
    match = _SIZE.match(str(text))
    if match is None:
        raise ValueError(f"not a size: {text!r} (e.g. 3gb, 512m)")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** "_kmgt".index(unit or "_"))


def shm_available(path: str = "/dev/shm") -> int:
    """Size of the filesystem at ``path`` in bytes (0 when it does not exist)."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return 0
    return stats.f_frsize * stats.f_blocks


# --------------------------------------------------------------------------------------------
# The server's command line
# --------------------------------------------------------------------------------------------


ADMIN_KEY_ENV = "BGBLUR_ADMIN_KEY"
"""The restricted APIs' key in the container (compose passes it; empty: a random one, closed)."""
# Triton flags of the container's server beyond those TritonServer sets: every metric family.
CONTAINER_TRITON_FLAGS = (
    "--allow-metrics=true",
    "--allow-gpu-metrics=true",
    "--allow-cpu-metrics=true",
)


def container_admin_key(environ: Mapping[str, str] = os.environ) -> tuple[str, bool]:
    """``($BGBLUR_ADMIN_KEY, False)``, or a random key and True when it is empty (the
    restricted APIs stay closed rather than open to an empty header)."""
    key = environ.get(ADMIN_KEY_ENV, "").strip()
    return (key, False) if key else (secrets.token_urlsafe(32), True)


def container_server_options(
    repository: Path,
    *,
    gpus: Sequence[int],
    admin_key: str,
    cuda_pool_mb: int = DEFAULT_CUDA_POOL_MB,
    address: str = "0.0.0.0",
    exit_timeout_s: int = 30,
    startup_timeout_s: float = 600.0,
    tritonserver: str = "tritonserver",
    triton_args: Sequence[str] = (),
    mps: bool = False,
) -> ServerOptions:
    """How the container serves ``repository``: the same ``TritonServer`` as the embedded
    server (the HTTP guard on :8000 with Triton's HTTP on loopback behind it, the supervisor
    restarting after a crash or a hang, the restricted APIs behind ``admin_key``), on the
    fixed ports 8000/8001/8002 (the host side is compose's business), the log on stdout (the
    container's log), a start-up that retries until ``startup_timeout_s``, and
    ``triton_args`` (compose's flags: metrics settings, log verbosity) last. ``mps``: under a
    CUDA MPS control daemon (``ServerOptions.mps``: started in the container, with private
    folders, unless ``$CUDA_MPS_PIPE_DIRECTORY`` names a running one)."""
    return ServerOptions(
        http_port=HTTP_PORT,
        grpc_port=GRPC_PORT,
        metrics_port=METRICS_PORT,
        address=address,
        device="gpu",
        gpus=list(gpus),
        repository=repository,
        tritonserver=tritonserver,
        verbose=True,
        cuda_pool_mb=cuda_pool_mb,
        exit_timeout_s=exit_timeout_s,
        admin_key=admin_key,
        start_attempts=None,
        startup_timeout_s=startup_timeout_s,
        extra_args=(*CONTAINER_TRITON_FLAGS, *triton_args),
        mps=mps,
    )


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse_sm(text: str) -> tuple[int, int]:
    """``90``, ``sm90``, ``sm_90`` or ``9.0`` -> ``(9, 0)``."""
    match = re.fullmatch(r"(?:sm_?)?(\d+)(\d)|(\d+)\.(\d)", text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected e.g. 90, sm90 or 9.0, got {text!r}")
    major, minor = match.group(1) or match.group(3), match.group(2) or match.group(4)
    return int(major), int(minor)


def _prepare_out(out: Path) -> None:
    """Remove a repository this module rendered before; refuse to touch anything else."""
    if out.exists():
        if not (out / RENDER_MARKER).is_file():
            raise ValueError(
                f"{out} exists and was not rendered by bgblur.server.deploy: not replacing"
            )
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)


def _render_from_args(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    _prepare_out(out)
    return render_container_repository(
        out,
        segmentation_model=args.model,
        plan_path_or_dir=args.plans,
        max_batch=args.max_batch,
        gpus=list(range(args.gpus)) if args.gpus is not None else None,
        compute_capabilities=args.sm,
        trt_version=args.trt_version,
        source=args.source,
        link=args.link,
    )


def _cmd_build_engine(args: argparse.Namespace) -> int:
    reports = build_engines(
        args.model,
        args.cache,
        trtexec=args.trtexec,
        trt_version=args.trt_version,
        min_batch=args.min_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        fp16=not args.fp32,
        weights_cache=args.weights_cache,
        force=args.force,
    )
    print(json.dumps(reports, indent=2))
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    repository = _render_from_args(args)
    if args.check:
        check_repository(repository)
    print(repository)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from bgblur.models.registry import get_model_spec

    gpus = list(range(args.gpus)) if args.gpus is not None else None
    if gpus is None:
        from bgblur.device import cuda_device_count

        gpus = list(range(cuda_device_count()))
    if not gpus:
        raise ModelUnavailableError(
            "no GPU visible in the container: check the GPU reservation (BGBLUR_GPU_COUNT, "
            "deploy.resources.reservations.devices) and the NVIDIA Container Toolkit"
        )
    need = shm_requirement(
        gpus=len(gpus),
        # The Python models' batch: segmentation (a plan: no stub) may batch more (--max-batch).
        max_batch=python_models_max_batch(args.source or default_model_source()),
        network_hw=get_model_spec(args.model).input_hw,
    )
    have = shm_available(args.shm_path)
    if args.shm_check != "off" and have < need.total_bytes:
        message = (
            f"{args.shm_path} holds {have:,} B, the Python backend may need {need.total_bytes:,} "
            f"B at the largest frames and batch:\n{need.explain()}\nset BGBLUR_SHM_SIZE in "
            "docker/.env (compose shm_size), or BGBLUR_SHM_CHECK=warn to start anyway"
        )
        if args.shm_check == "error":
            raise ModelUnavailableError(message)
        LOG.warning("%s", message)
    args.gpus = len(gpus)
    args.out = Path(args.out).resolve()
    repository = _render_from_args(args)
    triton_args = list(args.triton_args)
    if triton_args[:1] == ["--"]:
        triton_args = triton_args[1:]
    admin_key, generated = container_admin_key()
    if generated:
        LOG.warning(
            "%s is empty: the restricted APIs got a random key nobody knows (closed); set it "
            "to use them",
            ADMIN_KEY_ENV,
        )
    options = container_server_options(
        repository,
        gpus=gpus,
        admin_key=admin_key,
        cuda_pool_mb=args.cuda_memory_pool_mb,
        address=args.address,
        exit_timeout_s=args.exit_timeout,
        startup_timeout_s=args.startup_timeout,
        tritonserver=args.tritonserver,
        triton_args=triton_args,
        mps=args.mps,
    )
    server = TritonServer(options)
    if args.dry_run:
        argv = [a.replace(admin_key, "***") for a in server.command(repository)]  # no secrets
        shown = {
            "argv": argv,
            "http_guard": f"{options.address}:{server.http_port}",
            "triton_http": f"127.0.0.1:{server.triton_http_port}",
            "mps": options.mps,
            "shm": dataclasses.asdict(need),
        }
        print(json.dumps(shown, indent=2))
        return 0
    return serve_until_signal(server, "bgblur.server.deploy serve")


def _cmd_shm_size(args: argparse.Namespace) -> int:
    from bgblur.models.registry import get_model_spec

    estimate = shm_requirement(
        gpus=args.gpus, max_batch=args.max_batch, network_hw=get_model_spec(args.model).input_hw
    )
    print(estimate.explain())
    return 0


def _add_render_args(p: argparse.ArgumentParser, model_names: list[str]) -> None:
    p.add_argument("--model", required=True, choices=model_names)
    p.add_argument("--plans", required=True, type=Path, help="plan cache (or one plan file)")
    p.add_argument("--out", required=True, type=Path, help="model repository to write")
    p.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="segmentation's max_batch_size: the ensemble's (8) or more, to merge requests "
        "(the plan's profile must cover it)",
    )
    p.add_argument("--gpus", type=int, default=None, help="GPU count (default: visible)")
    p.add_argument("--sm", type=_parse_sm, action="append", help="compute capability (repeat)")
    p.add_argument("--trt-version", default=None, help="default: the container's trtexec's")
    p.add_argument("--source", type=Path, default=None, help=f"default: ${MODEL_SOURCE_ENV}")
    p.add_argument("--link", action="store_true", help="symlink the plan instead of copying")


def build_parser() -> argparse.ArgumentParser:
    """The command line (compose.yaml's commands must parse with it)."""
    from bgblur.models.registry import DEFAULT_MODEL, model_names

    names = model_names()
    parser = argparse.ArgumentParser(
        prog="python -m bgblur.server.deploy",
        description="Build the TensorRT engine, render the model repository and serve, in the "
        "Docker image (docker/).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build-engine", help="ONNX -> TensorRT plan in the cache (idempotent)")
    p.add_argument("--model", required=True, choices=names)
    p.add_argument("--cache", required=True, type=Path, help="plan cache folder (volume)")
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument(
        "--opt-batch", type=int, default=None, help="default: 4 up to --max-batch 8, half above"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="the profile's largest batch: serve's --max-batch (8, or up to 64 for "
        "segmentation to merge requests)",
    )
    p.add_argument("--fp32", action="store_true", help="no reduced precision")
    p.add_argument("--trtexec", default=None, help="default: PATH, /usr/src/tensorrt/bin")
    p.add_argument("--trt-version", default=None, help="default: read from trtexec")
    p.add_argument("--weights-cache", type=Path, default=None, help="default: $BGBLUR_CACHE")
    p.add_argument("--force", action="store_true", help="rebuild even when current")
    p.set_defaults(handler=_cmd_build_engine)

    p = sub.add_parser("render", help="write the container's model repository")
    _add_render_args(p, names)
    p.add_argument("--check", action="store_true", help="parse it (needs tritonclient)")
    p.set_defaults(handler=_cmd_render)

    p = sub.add_parser(
        "serve", help="render, then serve it (guard, supervisor) with TRITON_ARGS until SIGTERM"
    )
    _add_render_args(p, names)
    p.add_argument("--cuda-memory-pool-mb", type=int, default=DEFAULT_CUDA_POOL_MB)
    p.add_argument(
        "--shm-check",
        choices=("error", "warn", "off"),
        default=os.environ.get(SHM_CHECK_ENV) or "error",
        help=f"when /dev/shm is smaller than needed (default: ${SHM_CHECK_ENV} or error)",
    )
    p.add_argument("--shm-path", default="/dev/shm")
    p.add_argument("--tritonserver", default="tritonserver")
    p.add_argument("--address", default="0.0.0.0", help="where the endpoints listen")
    p.add_argument(
        "--exit-timeout",
        type=int,
        default=30,
        help="seconds in-flight requests get at a stop (below compose's stop_grace_period)",
    )
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to become ready")
    p.add_argument(
        "--mps",
        action="store_true",
        help="serve under CUDA MPS (a daemon started in the container unless "
        "$CUDA_MPS_PIPE_DIRECTORY names a running one)",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would run, then exit")
    p.add_argument("triton_args", nargs=argparse.REMAINDER, help="-- then tritonserver flags")
    p.set_defaults(handler=_cmd_serve)

    p = sub.add_parser("shm-size", help="the /dev/shm the Python backend needs, and why")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--model", choices=names, default=DEFAULT_MODEL)
    p.set_defaults(handler=_cmd_shm_size)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args))
    except (ModelUnavailableError, ValueError, RuntimeError, OSError) as exc:
        print(f"bgblur.server.deploy {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
