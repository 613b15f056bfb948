"""Start and stop the embedded Triton Inference Server on the project's model repository.

The server is the real ``tritonserver`` 2.51 that PyPI's nvidia-pytriton bundles (or the one in
``$TRITONSERVER_HOME``). The launcher:

- copies the Python-backend stub for the running Python next to the Python backend;
- renders the model repository for this machine into a temporary folder: an ``instance_group``
  of KIND_GPU on every visible GPU when the GPU stages can run (CuPy + a CUDA driver), else
  KIND_CPU; optionally another segmentation network;
- starts the server on chosen (or free) ports with the venv first on PATH and this Python's
  libpython first on LD_LIBRARY_PATH, waits for readiness with a timeout and shows the log tail
  when it fails;
- puts the HTTP guard (``bgblur.server.guard``) on the public HTTP port, with Triton's own
  HTTP port on loopback behind it;
- hands the lifecycle to the supervisor (``bgblur.server.supervisor``): restarts after a crash or a
  hang, start-up included, with backoff;
- stops it on SIGINT/SIGTERM or on leaving the context, and kills only what it started.

Command line (``make serve``): ``python -m bgblur.server.launcher [--http-port 8000]
[--device auto] [--segmentation-batch 64] [--mps]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from bgblur.device import cuda_device_count
from bgblur.models.registry import model_names
from bgblur.parameters import CUDA_POOL_MB
from bgblur.server.grpc_guard import GrpcGuard, GrpcGuardSettings
from bgblur.server.guard import GuardSettings, HttpGuard
from bgblur.server.model_config import (
    ensemble_steps,
    read_model_config,
    set_instance_group,
    set_string_parameter,
    write_model_config,
)
from bgblur.server.mps import MpsDaemon, MpsError
from bgblur.server.privileges import (
    ServerAccount,
    account_cannot_serve,
    give_to_account,
    resolve_server_account,
)
from bgblur.server.supervisor import (
    SHM_REGION_PREFIX,
    STUB_EXECUTABLE,
    Supervisor,
    remove_shm_regions,
    shm_regions,
)
from bgblur_client.admin_key import ADMIN_HEADER, load_or_create_admin_key, record_server_uid

LOG = logging.getLogger("bgblur.server.launcher")

PROJECT_ROOT = Path(__file__).resolve().parents[3]
MODEL_REPOSITORY = PROJECT_ROOT / "model_repository"
PYTHON_MODELS = ("preprocess", "segmentation", "temporal_smoothing", "postprocess")
# Decoupled Python models, rendered like PYTHON_MODELS (one instance each) when present.
VIDEO_MODELS = ("background_blur_video",)
# The whole service in one Python model (one backend hop; same interface as the ensemble).
# Opt-in (``direct_model=True``, ``--direct-model``): it holds a second copy of the network.
DIRECT_MODELS = ("background_blur_direct",)
EXIT_TIMEOUT_S = 10
# Locked-down defaults (docs/reliability.md): these APIs need the admin key
# (bgblur_client.admin_key), over HTTP (the guard checks it) and gRPC (Triton checks it).
RESTRICTED_APIS = ("model-repository", "logging", "trace")
# The supervisor's tiny inference (the hang check): 8x8 black pixels through the entry model.
PROBE_MODEL = "background_blur"
_PROBE_BODY = json.dumps(
    {"inputs": [{"name": "FRAMES", "shape": [1, 8, 8, 3], "datatype": "UINT8", "data": [0] * 192}]}
).encode()


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time; the message holds its log tail."""


def free_port() -> int:
    """A TCP port free on localhost right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tritonserver_home() -> Path:
    """``$TRITONSERVER_HOME`` or the server bundled in the installed nvidia-pytriton wheel."""
    if os.environ.get("TRITONSERVER_HOME"):
        return Path(os.environ["TRITONSERVER_HOME"])
    try:
        import pytriton
    except ImportError:
        raise ServerStartError(
            "no Triton server found: install nvidia-pytriton (make setup) or set TRITONSERVER_HOME"
        ) from None
    return Path(pytriton.__file__).parent / "tritonserver"


def bundled_server_environment(home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) for the server in ``home``: this
    interpreter first on PATH (the Python stub takes its packages from the python3 there),
    its libpython and nvidia-pytriton's libraries first on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    libs = [
        sysconfig.get_config_var("LIBDIR") or "",
        str(home.parent.parent / "nvidia_pytriton.libs"),
        env.get("LD_LIBRARY_PATH", ""),
    ]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in libs if p)
    return env


def weights_cache_dir() -> Path:
    """Where the networks' weights are cached: ``$BGBLUR_CACHE`` or ``~/.cache/bgblur``."""
    configured = os.environ.get("BGBLUR_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "bgblur"


def prepare_backends(home: Path) -> Path:
    """The backend directory, with the Python stub for this interpreter in place."""
    python_backend = home / "backends" / "python"
    stub = python_backend / "triton_python_backend_stub"
    if not stub.exists():
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        source = home / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not source.exists():
            raise ServerStartError(f"no Python backend stub for Python {version} in {home}")
        shutil.copy2(source, stub)
        stub.chmod(0o755)
    return home / "backends"


# Instances per GPU the embedded server (``TritonServer``) runs where none is asked for.
# postprocess is the busiest stage at batch 8, so it gets a second instance; batch-1 latency
# does not depend on it. Two postprocess instances serve ~10% more frames/s at batch 8
# (docs/benchmarks.md). The container keeps one of each (render_model_repository's default):
# its /dev/shm size is computed for that (docker/README.md).
GPU_INSTANCE_COUNTS = {"postprocess": 2}
# The direct model (when served) runs two instances on any device: with one, Triton 2.51's
# dynamic batcher now and then holds a back-to-back client's request in the queue for
# hundreds of ms; a second instance avoids it (docs/architecture.md, one-hop model).
DIRECT_INSTANCE_COUNTS = {"background_blur_direct": 2}


def instance_counts_for(
    device: str, asked: dict[str, int] | None = None, *, direct_model: bool = False
) -> dict[str, int]:
    """Instances per device the embedded server runs: ``asked`` on top of, on a GPU,
    ``GPU_INSTANCE_COUNTS`` and, when the direct model is served, ``DIRECT_INSTANCE_COUNTS``
    (others run one)."""
    defaults = {
        **(GPU_INSTANCE_COUNTS if device == "gpu" else {}),
        **(DIRECT_INSTANCE_COUNTS if direct_model else {}),
    }
    return {**defaults, **(asked or {})}


# The segmentation step's batch: larger than a request (the ensemble's max_batch_size), so that
# its dynamic batcher merges the requests of several clients into one network run
# (``render_model_repository(segmentation_batch=...)``, ``--segmentation-batch``).
SEGMENTATION = "segmentation"
SEGMENTATION_BATCH_LIMIT = 256
"""The largest ``segmentation_batch`` accepted (a CUDA graph is captured per bucket up to it)."""
CONFIG_BATCH_SIZES = "cuda_graph_batch_sizes"  # bgblur.runtimes.select.CONFIG_BATCH_SIZES


def doubling_batch_sizes(max_batch: int) -> tuple[int, ...]:
    """1, 2, 4, ... below ``max_batch``, then ``max_batch``: the CUDA-graph buckets of a
    segmentation model batching up to ``max_batch`` frames (``(1, 2, 4, 8)`` for 8,
    ``(1, 2, 4, 8, 16, 32, 64)`` for 64, ``(1, 2, 4, 8, 16, 24)`` for 24)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch)


def segmentation_preferred_batch_sizes(max_batch: int, request_batch: int) -> tuple[int, ...]:
    """The segmentation batcher's ``preferred_batch_size`` for batches up to ``max_batch`` of
    requests of up to ``request_batch`` frames: the buckets of ``doubling_batch_sizes`` from
    ``request_batch`` up. A batch that fills a bucket runs at once (no padded rows, no wait);
    any other waits up to the queue delay for more requests. A request below ``request_batch``
    (batch-1 latency) waits the queue delay as without the option."""
    return tuple(b for b in doubling_batch_sizes(max_batch) if b >= request_batch)


def ensembles_using(configs: Sequence[Any], model: str) -> dict[str, int]:
    """``{ensemble: max_batch_size}`` of the ensembles among ``configs`` with a ``model`` step."""
    return {
        config.name: int(config.max_batch_size)
        for config in configs
        if model in ensemble_steps(config)
    }


def render_model_repository(
    destination: Path,
    *,
    device: str,
    gpus: list[int],
    segmentation_model: str | None = None,
    source: Path = MODEL_REPOSITORY,
    instance_counts: dict[str, int] | None = None,
    queue_delay_us: int | None = None,
    model_parameters: dict[str, str] | None = None,
    direct_model: bool = False,
    segmentation_batch: int | None = None,
    segmentation_queue_delay_us: int | None = None,
) -> Path:
    """Copy ``source`` to ``destination`` with instance groups for ``device`` ("cpu"/"gpu").

    Each Python-backend model gets one KIND_CPU instance or one KIND_GPU instance per GPU, or
    ``instance_counts[model]`` of them (per GPU).
    ``segmentation_model`` replaces the network named in preprocess and segmentation;
    ``queue_delay_us`` replaces their dynamic batchers' ``max_queue_delay_microseconds``
    (tuning); ``model_parameters`` replaces the value of each named config ``parameters`` key
    in every model that has it (e.g. ``{"resize_interpolation": "area"}``; a key no model has
    is a ValueError). ``DIRECT_MODELS`` are left out unless ``direct_model``.

    ``segmentation_batch`` lets the ``segmentation`` step batch more frames than a request may
    hold: its ``max_batch_size`` becomes ``segmentation_batch`` (at least every ensemble's
    ``max_batch_size`` that calls it: Triton refuses a step that batches less than its
    ensemble; at most ``SEGMENTATION_BATCH_LIMIT``), its ``cuda_graph_batch_sizes``
    ``doubling_batch_sizes(segmentation_batch)`` and its ``preferred_batch_size``
    ``segmentation_preferred_batch_sizes``; requests stay at most the ensemble's
    ``max_batch_size`` frames. ``segmentation_queue_delay_us`` sets segmentation's queue delay
    alone (after ``queue_delay_us``).
    """
    overrides = dict(model_parameters or {})
    if segmentation_model is not None:
        overrides["segmentation_model"] = segmentation_model
    for name, delay in (
        ("queue_delay_us", queue_delay_us),
        ("segmentation_queue_delay_us", segmentation_queue_delay_us),
    ):
        if delay is not None and delay < 0:
            raise ValueError(f"{name} must be >= 0, got {delay}")
    counts = dict(instance_counts or {})
    countable = (*PYTHON_MODELS, *DIRECT_MODELS)
    unknown = set(counts) - set(countable)
    if unknown or any(int(n) < 1 for n in counts.values()):
        raise ValueError(
            f"instance_counts takes counts >= 1 for {', '.join(countable)}; got {counts}"
        )
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if segmentation_model is not None and segmentation_model not in model_names():
        raise ValueError(
            f"unknown segmentation model {segmentation_model!r}; known: {', '.join(model_names())}"
        )
    configs = [read_model_config(path) for path in source.glob("*/config.pbtxt")]
    for key in overrides:
        if not any(key in config.parameters for config in configs):
            raise ValueError(f"no model has a config parameter {key!r}")
    callers = ensembles_using(configs, SEGMENTATION)
    request_batch = max(callers.values(), default=1)
    if segmentation_batch is not None and not (
        request_batch <= segmentation_batch <= SEGMENTATION_BATCH_LIMIT
    ):
        users = ", ".join(f"{name} {size}" for name, size in sorted(callers.items()))
        raise ValueError(
            f"segmentation_batch must be between the max_batch_size of the ensembles that call "
            f"segmentation ({users or 'none'}) and {SEGMENTATION_BATCH_LIMIT}, got "
            f"{segmentation_batch}"
        )
    left_out = () if direct_model else DIRECT_MODELS
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__", *left_out))
    for model in (*PYTHON_MODELS, *VIDEO_MODELS, *DIRECT_MODELS):
        if model not in PYTHON_MODELS and not (destination / model).is_dir():
            continue
        config_path = destination / model / "config.pbtxt"
        config = read_model_config(config_path)
        for key, value in overrides.items():
            set_string_parameter(config, key, value)
        if queue_delay_us is not None and config.HasField("dynamic_batching"):
            config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
        if model == SEGMENTATION:
            set_segmentation_batching(
                config,
                segmentation_batch=segmentation_batch,
                request_batch=request_batch,
                queue_delay_us=segmentation_queue_delay_us,
            )
        set_instance_group(config, kind=device, count=int(counts.get(model, 1)), gpus=gpus)
        write_model_config(
            config_path, config, f"Rendered by bgblur.server.launcher from {source / model}."
        )
    return destination


def set_segmentation_batching(
    config: Any,
    *,
    segmentation_batch: int | None,
    request_batch: int,
    queue_delay_us: int | None = None,
) -> None:
    """``segmentation``'s ``config`` batching up to ``segmentation_batch`` frames (None: as it
    is): ``max_batch_size``, the CUDA-graph buckets and the preferred batch sizes (see
    ``render_model_repository``); ``queue_delay_us``: its queue delay (None: as it is)."""
    if segmentation_batch is not None:
        config.max_batch_size = segmentation_batch
        config.parameters[CONFIG_BATCH_SIZES].string_value = ",".join(
            map(str, doubling_batch_sizes(segmentation_batch))
        )
        del config.dynamic_batching.preferred_batch_size[:]
        config.dynamic_batching.preferred_batch_size.extend(
            segmentation_preferred_batch_sizes(segmentation_batch, request_batch)
        )
    if queue_delay_us is not None:
        config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us


@dataclass(frozen=True)
class ServerOptions:
    """How ``TritonServer`` serves: the embedded default, or a prepared repository (the container).

    Attributes:
        http_port, grpc_port, metrics_port: ports (free ones when None). ``http_port`` is the
            HTTP guard's; Triton's own HTTP port is a loopback port behind it.
        device: ``"auto"`` (GPU when the GPU stages can run), ``"gpu"`` or ``"cpu"``.
        segmentation_model: network to serve instead of the repository's default.
        startup_timeout_s: how long to wait for readiness.
        log_path: where the server log goes (when None: a temporary file, removed when the
            server stops with exit code 0 and kept, with a warning naming it, otherwise).
        verbose: the server log goes to this process's stdout/stderr instead of a file.
        model_repository: the source the embedded repository is rendered from.
        instance_counts: instances per GPU of a Python model, e.g. ``{"postprocess": 1}``
            (default: ``GPU_INSTANCE_COUNTS`` on GPUs, else 1 each; the counts given replace
            those of the models they name).
        queue_delay_us: the Python models' ``max_queue_delay_microseconds`` (default: the
            repository's).
        segmentation_batch: the segmentation step's ``max_batch_size`` when above the
            ensemble's (its batcher merges requests of several clients; CUDA graphs and
            preferred batch sizes up to it: ``render_model_repository``); None: the
            repository's (8). Not applied to a prepared ``repository``.
        segmentation_queue_delay_us: segmentation's ``max_queue_delay_microseconds`` alone
            (default: ``queue_delay_us``, else the repository's).
        mps: run the server's processes as clients of a CUDA MPS control daemon
            (``bgblur.server.mps``): the one ``$CUDA_MPS_PIPE_DIRECTORY`` names when it runs,
            else one started for this server (private pipe and log folders) and stopped with
            it. GPU only; ``nvidia-cuda-mps-control`` must be on PATH to start one.
        model_parameters: config ``parameters`` values to replace, by key, in every model that
            has them, e.g. ``{"resize_interpolation": "area"}`` (``render_model_repository``).
        address: the address the HTTP (guard), gRPC and metrics endpoints bind to; loopback by
            default (``"0.0.0.0"`` serves every interface).
        shared_memory: client shared-memory registration (system and CUDA): ``"auto"``/``"on"``
            offer it to holders of the admin key (the client library sends it); ``"off"``
            refuses it to everyone.
        supervise: let the supervisor own the lifecycle (restart after a crash or a hang).
        direct_model: also serve ``background_blur_direct`` (the service in one Python model:
            one backend hop instead of three, a second copy of the network in memory).
        guard: put the HTTP and gRPC guards in front of Triton's ports (False: Triton's own
            ports are ``http_port`` and ``grpc_port``; for measuring the guards' cost).
        supervision: ``Supervisor`` settings by name, e.g. ``{"probe_timeout_s": 2.0}``.
        guard_options: ``GuardSettings`` by name, e.g. ``{"body_timeout_s": 5.0}``.
        triton_http_port, triton_grpc_port: Triton's own HTTP and gRPC ports behind the guards,
            on 127.0.0.1 (free ones when None).
        start_attempts: start attempts ``start()`` makes before it raises (each crash during
            start-up is followed by another, with backoff); None: until ``startup_timeout_s``.
        repository: serve this model repository as it is instead of rendering one (the
            container renders its own: ``bgblur.server.deploy``); ``device`` still says
            whether the server gets CUDA memory pools.
        tritonserver: the server executable; None: ``$TRITONSERVER_HOME``'s or the one
            nvidia-pytriton bundles (with this interpreter's Python stub and libraries).
        backend_directory: ``--backend-directory`` for ``tritonserver`` (None: its default).
        gpus: the GPUs for CUDA memory pools (default: every visible one on ``device="gpu"``).
        cuda_pool_mb: Triton's CUDA memory pool per GPU (MiB).
        exit_timeout_s: how long Triton waits for in-flight requests at a stop (also the
            drain's deadline).
        admin_key: the key of the restricted APIs; None: this user's key file
            (``bgblur_client.admin_key``).
        user: the account tritonserver and its stubs run as (``bgblur.server.privileges``):
            ``"auto"`` (started by root: ``bgblur`` or ``nobody`` when it can run the server,
            else root with a warning), a name, or None (this process's user).
        extra_args: more ``tritonserver`` flags, last (metrics settings, log verbosity); the
            flags this class sets (ports, addresses, repository, restricted APIs) are refused.
    """

    http_port: int | None = None
    grpc_port: int | None = None
    metrics_port: int | None = None
    device: str = "auto"
    segmentation_model: str | None = None
    startup_timeout_s: float = 180.0
    log_path: Path | None = None
    verbose: bool = False
    model_repository: Path = MODEL_REPOSITORY
    instance_counts: Mapping[str, int] | None = None
    queue_delay_us: int | None = None
    segmentation_batch: int | None = None
    segmentation_queue_delay_us: int | None = None
    mps: bool = False
    model_parameters: Mapping[str, str] = field(default_factory=dict)
    address: str = "127.0.0.1"
    shared_memory: str = "auto"
    supervise: bool = True
    direct_model: bool = False
    guard: bool = True
    supervision: Mapping[str, float] = field(default_factory=dict)
    guard_options: Mapping[str, Any] = field(default_factory=dict)
    start_attempts: int | None = 3
    triton_http_port: int | None = None
    triton_grpc_port: int | None = None
    repository: Path | None = None
    tritonserver: str | None = None
    backend_directory: Path | None = None
    gpus: Sequence[int] | None = None
    cuda_pool_mb: int = CUDA_POOL_MB
    exit_timeout_s: int = EXIT_TIMEOUT_S
    admin_key: str | None = None
    user: str | None = "auto"
    extra_args: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.shared_memory not in ("auto", "on", "off"):
            raise ValueError(f"shared_memory must be auto, on or off, got {self.shared_memory!r}")
        if self.device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"device must be auto, cpu or gpu, got {self.device!r}")
        if self.mps and self.device == "cpu":
            raise ValueError("mps (CUDA MPS) serves GPU processes: not with device='cpu'")
        owned = [a for a in self.extra_args if a.split("=", 1)[0] in OWNED_FLAGS]
        if owned:
            raise ValueError(
                f"{', '.join(owned)}: set by the launcher (ServerOptions fields), not extra_args"
            )


# tritonserver flags ``TritonServer`` sets itself (``ServerOptions.extra_args`` may not).
OWNED_FLAGS = frozenset(
    {
        "--model-repository",
        "--backend-directory",
        "--http-port",
        "--grpc-port",
        "--metrics-port",
        "--http-address",
        "--grpc-address",
        "--metrics-address",
        "--model-control-mode",
        "--load-model",
        "--http-restricted-api",
        "--grpc-restricted-protocol",
        "--exit-timeout-secs",
        "--cuda-memory-pool-byte-size",
    }
)


class TritonServer:
    """The Triton server behind the HTTP guard, owned by the supervisor; a context manager.

    ``TritonServer(ServerOptions(device="cpu"))`` or, the same, ``TritonServer(device="cpu")``:
    keywords are ``ServerOptions`` fields.
    """

    def __init__(self, options: ServerOptions | None = None, /, **fields: Any) -> None:
        if options is None:
            options = ServerOptions(**fields)
        elif fields:
            options = dataclasses.replace(options, **fields)
        self.options = options
        gpu_count = cuda_device_count()
        if options.device == "gpu" and gpu_count == 0 and options.gpus is None:
            raise ServerStartError("--device gpu: no CUDA GPU usable by CuPy on this machine")
        device = options.device
        self.device = ("gpu" if gpu_count else "cpu") if device == "auto" else device
        if options.mps and self.device != "gpu":
            raise ServerStartError("--mps: CUDA MPS needs a GPU server; this one runs on the CPU")
        if self.device == "gpu":
            self.gpus = list(options.gpus) if options.gpus is not None else list(range(gpu_count))
        else:
            self.gpus = []
        self.http_port = options.http_port or free_port()
        guard = options.guard
        self.triton_http_port = (
            (options.triton_http_port or free_port()) if guard else self.http_port
        )
        self.grpc_port = options.grpc_port or free_port()
        self.triton_grpc_port = (
            (options.triton_grpc_port or free_port()) if options.guard else self.grpc_port
        )
        self.metrics_port = options.metrics_port or free_port()
        self.startup_timeout_s = options.startup_timeout_s
        self.instance_counts = instance_counts_for(
            self.device, dict(options.instance_counts or {}), direct_model=options.direct_model
        )
        self.verbose = options.verbose
        self._workdir = Path(tempfile.mkdtemp(prefix="bgblur-triton-"))
        self.log_path = options.log_path or self._workdir / "tritonserver.log"
        # The temporary folder (rendered repository, log) goes at a clean stop; a log the
        # caller placed, or one of a server that did not exit cleanly, stays.
        self._keep_log = options.log_path is not None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file = None
        self.address = options.address
        self.shared_memory_open = options.shared_memory != "off"
        # The restricted APIs answer holders of this user's admin key (bgblur_client.admin_key);
        # shared memory, when off, a per-launch key nobody is given.
        self.admin_key = options.admin_key or load_or_create_admin_key()
        self._shared_memory_key = (
            self.admin_key if self.shared_memory_open else secrets.token_urlsafe(32)
        )
        # The Python backend's /dev/shm regions of this launch share one prefix: after a crash
        # at any moment (start-up included) every one of them is found and removed.
        self.stub_shm_prefix = f"{SHM_REGION_PREFIX}{secrets.token_hex(6)}_"
        self.supervisor = (
            Supervisor(
                self, startup_timeout_s=self.startup_timeout_s, **(options.supervision or {})
            )
            if options.supervise
            else None
        )
        self.start_attempts = options.start_attempts
        self.account: ServerAccount | None = None  # set at start (_server_account)
        self.guard: HttpGuard | None = None
        self.grpc_guard: GrpcGuard | None = None
        self._repository: Path | None = None
        self._probe_model = PROBE_MODEL
        self._lock = threading.RLock()
        self._stopping = False
        self.mps: MpsDaemon | None = None  # set at start when options.mps

    @property
    def http_url(self) -> str:
        return f"localhost:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"localhost:{self.metrics_port}"

    def command(self, repository: Path) -> list[str]:
        """The ``tritonserver`` argv that serves ``repository``."""
        options = self.options
        triton_address = "127.0.0.1" if options.guard else self.address
        restricted = ",".join(RESTRICTED_APIS)
        if options.tritonserver is None:  # the bundled server, with this Python's stub
            home = tritonserver_home()
            args = [
                str(home / "bin" / "tritonserver"),
                f"--backend-directory={prepare_backends(home)}",
            ]
        else:
            args = [options.tritonserver]
            if options.backend_directory is not None:
                args.append(f"--backend-directory={options.backend_directory}")
        args += [
            f"--model-repository={repository}",
            f"--http-port={self.triton_http_port}",
            f"--grpc-port={self.triton_grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--exit-timeout-secs={options.exit_timeout_s}",
            "--strict-readiness=true",
            "--log-info=true",
            # Locked-down defaults (docs/reliability.md): loopback only; model control is
            # explicit (every model loaded at start) and restricted to the launcher, which
            # unloads the entry models to drain before a stop; logging, trace and shared-memory
            # registration need the admin key too.
            f"--http-address={triton_address}",
            f"--grpc-address={triton_address}",
            f"--metrics-address={self.address}",
            "--model-control-mode=explicit",
            "--load-model=*",
            f"--http-restricted-api={restricted}:{ADMIN_HEADER}={self.admin_key}",
            f"--grpc-restricted-protocol={restricted}:{ADMIN_HEADER}={self.admin_key}",
            f"--http-restricted-api=shared-memory:{ADMIN_HEADER}={self._shared_memory_key}",
            f"--grpc-restricted-protocol=shared-memory:{ADMIN_HEADER}={self._shared_memory_key}",
            f"--backend-config=python,shm-region-prefix-name={self.stub_shm_prefix}",
        ]
        # Intermediate tensors live in Triton's CUDA pool; when full it silently falls back to
        # pinned host memory: bgblur.parameters.CUDA_POOL_MB says how it was sized.
        pool_bytes = options.cuda_pool_mb << 20
        args += [f"--cuda-memory-pool-byte-size={gpu}:{pool_bytes}" for gpu in self.gpus]
        if not any(a.startswith("--metrics-config=summary_latencies") for a in options.extra_args):
            # Request latency quantiles (nv_inference_*_summary_us), as the dashboard shows them.
            args.append("--metrics-config=summary_latencies=true")
        if not self.gpus:
            # A CPU server needs no page-locked pool and has no GPU metrics: without these
            # flags Triton tries CUDA, NVML and DCGM for them and logs each failure.
            args += ["--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false"]
        return args + list(options.extra_args)

    @property
    def admin_headers(self) -> dict[str, str]:
        """HTTP headers that unlock the restricted APIs (``bgblur_client.admin_key``)."""
        return {ADMIN_HEADER: self.admin_key}

    def server_pid(self) -> int | None:
        """The process id of the running tritonserver, None when none runs."""
        process = self._process
        return None if process is None else process.pid

    def environment(self) -> dict[str, str]:
        """The server's environment: for the bundled server, this interpreter first on PATH
        (the stub takes its packages from the python3 there) and its libraries first; run as
        another account, a home of its own (the launch's folder) and the weights cache named."""
        if self.options.tritonserver is not None:
            env = {**os.environ, "PYTHONUNBUFFERED": os.environ.get("PYTHONUNBUFFERED", "1")}
        else:
            env = bundled_server_environment(tritonserver_home())
        if self.account is not None:
            env["BGBLUR_CACHE"] = str(weights_cache_dir())
            env["HOME"] = str(self._workdir)
            env.pop("XDG_CACHE_HOME", None)
        if self.mps is not None:
            env.update(self.mps.client_environment())
        return env

    def _start_mps(self) -> MpsDaemon:
        """The MPS daemon the server is to use (``ServerOptions.mps``): the running one
        ``$CUDA_MPS_PIPE_DIRECTORY`` names, else one started with folders in the work folder,
        owned by the server's account."""
        account = self.account
        try:
            daemon = MpsDaemon.attach_or_start(
                self._workdir / "mps",
                owner=None if account is None else (account.uid, account.gid),
            )
        except MpsError as exc:
            raise ServerStartError(str(exc)) from None
        if account is not None and account.uid != os.geteuid():
            LOG.warning(
                "CUDA MPS runs one user's processes at a time: tritonserver runs as %s, this "
                "process as uid %d, so CUDA work of this user's processes waits while the "
                "server's run (user=None / --user '' runs both as one account)",
                account.name,
                os.geteuid(),
            )
        return daemon

    def _server_account(self) -> ServerAccount | None:
        """The account the server runs as (None: this process's), checked to be able to."""
        self.account = None
        try:
            account = resolve_server_account(self.options.user)
        except ValueError as exc:
            raise ServerStartError(str(exc)) from None
        if account is None:
            return None
        assert self._repository is not None
        argv = self.command(self._repository)
        binary = Path(shutil.which(argv[0]) or argv[0])
        readable = [self._repository, binary.parent]
        if weights_cache_dir().exists():
            readable.append(weights_cache_dir())
        executable = [binary]
        if self.options.tritonserver is None:
            executable.append(prepare_backends(tritonserver_home()) / "python" / STUB_EXECUTABLE)
        give_to_account(self._workdir, account)  # its home; the repository is inside
        environment = {**self.environment(), "HOME": str(self._workdir)}
        reason = account_cannot_serve(
            account, readable=readable, executable=executable, environment=environment
        )
        if reason is None:
            record_server_uid(account.uid)
            LOG.info("tritonserver runs as %s (uid %d)", account.name, account.uid)
            return account
        os.chown(self._workdir, os.geteuid(), os.getegid())
        message = f"account {account.name!r} cannot run the server: {reason}"
        if self.options.user != "auto":
            raise ServerStartError(message)
        LOG.warning("tritonserver runs as root: %s", message)
        return None

    def start(self) -> TritonServer:
        """Start the server and wait until it is ready (raises ``ServerStartError``).

        Supervised, a crash during start-up is followed by another attempt with backoff, up to
        ``start_attempts`` attempts within ``startup_timeout_s``.
        """
        options = self.options
        if options.repository is not None:
            self._repository = options.repository
        else:
            self._repository = render_model_repository(
                self._workdir / "model_repository",
                device=self.device,
                gpus=self.gpus,
                segmentation_model=options.segmentation_model,
                source=options.model_repository,
                instance_counts=self.instance_counts,
                queue_delay_us=options.queue_delay_us,
                model_parameters=dict(options.model_parameters or {}),
                direct_model=options.direct_model,
                segmentation_batch=options.segmentation_batch,
                segmentation_queue_delay_us=options.segmentation_queue_delay_us,
            )
        self.command(self._repository)  # fails here, not in the supervisor, without a server
        self.account = self._server_account()
        models = self.entry_models()
        self._probe_model = PROBE_MODEL if PROBE_MODEL in models or not models else models[0]
        self._stopping = False
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        try:
            if options.mps:
                self.mps = self._start_mps()
            if options.guard:
                self.guard = HttpGuard(
                    GuardSettings(
                        host=self.address,
                        port=self.http_port,
                        upstream_port=self.triton_http_port,
                        admin_key=self.admin_key,
                        shared_memory=self.shared_memory_open,
                        # Cheap (no I/O on the guard's event loop): the request itself is
                        # forwarded to Triton's readiness after this says yes.
                        ready=lambda: self.supervisor is None or self.supervisor.ready,
                        **(options.guard_options or {}),
                    )
                ).start()
                self.grpc_guard = GrpcGuard(
                    GrpcGuardSettings(
                        host=self.address,
                        port=self.grpc_port,
                        upstream=f"127.0.0.1:{self.triton_grpc_port}",
                        ready=lambda: self.supervisor is None or self.supervisor.ready,
                    )
                ).start()
            if self.supervisor is None:
                self.launch("start")
                self.wait_ready()
            else:
                self._wait_supervised_start()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_supervised_start(self) -> None:
        supervisor = self.supervisor
        assert supervisor is not None
        supervisor.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not supervisor.wait_serving(0.25):
            attempts = 1 + sum(e.attempts for e in supervisor.events)
            failed = bool(supervisor.events) and supervisor.events[-1].error is not None
            out_of_attempts = (
                self.start_attempts is not None and failed and (attempts >= self.start_attempts)
            )
            if out_of_attempts or time.monotonic() > deadline:
                last = supervisor.events[-1].error if supervisor.events else "not ready"
                raise ServerStartError(
                    f"tritonserver did not start ({attempts} attempts; last: {last})\n"
                    f"{self.log_tail()}"
                )

    def launch(self, reason: str) -> None:
        """Kill the server and its stubs if they run, remove this launch's shared memory, and
        start it again on the same ports (does not wait; the supervisor calls this)."""
        with self._lock:
            if self._stopping:
                raise ServerStartError("stopping")
            self._kill()
            remove_shm_regions(shm_regions(self.stub_shm_prefix))
            if self._log_file is not None and reason != "start":
                note = f"\n=== bgblur supervisor: {reason}; restarting ===\n"
                self._log_file.write(note.encode())
                self._log_file.flush()
            assert self._repository is not None
            account = self.account
            self._process = subprocess.Popen(
                self.command(self._repository),
                env=self.environment(),
                stdout=None if self.verbose else self._log_file,
                stderr=subprocess.STDOUT if not self.verbose else None,
                start_new_session=True,  # a terminal's Ctrl-C reaches the launcher, which stops it
                user=None if account is None else account.uid,
                group=None if account is None else account.gid,
                extra_groups=None if account is None else [],
            )

    def _kill(self) -> None:
        """SIGKILL the server's process group (its own session: only what we started)."""
        process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        with contextlib.suppress(ProcessLookupError):  # stubs that outlived it
            os.killpg(process.pid, signal.SIGKILL)

    def entry_models(self) -> list[str]:
        """The models clients call: those no ensemble of the repository uses as a step."""
        if self._repository is None:
            return []
        models = sorted(p.parent.name for p in self._repository.glob("*/config.pbtxt"))
        steps: set[str] = set()
        for model in models:
            steps.update(
                ensemble_steps(read_model_config(self._repository / model / "config.pbtxt"))
            )
        return [m for m in models if m not in steps]

    def drain(self, timeout_s: float | None = None) -> bool:
        """Unload the entry models: new requests are refused at once, requests in flight through
        an ensemble finish (a plain SIGTERM in 2.51 refuses their next step). True when every
        entry model is gone within ``timeout_s`` (default: the exit timeout)."""
        timeout_s = self.options.exit_timeout_s if timeout_s is None else timeout_s
        base = f"http://127.0.0.1:{self.triton_http_port}/v2/repository"
        deadline = time.monotonic() + timeout_s
        try:
            for model in self.entry_models():
                request = urllib.request.Request(
                    f"{base}/models/{model}/unload",
                    data=b"{}",
                    headers=self.admin_headers,
                    method="POST",
                )
                urllib.request.urlopen(request, timeout=timeout_s).close()
            while time.monotonic() < deadline:
                request = urllib.request.Request(
                    f"{base}/index", data=b"{}", headers=self.admin_headers, method="POST"
                )
                with urllib.request.urlopen(request, timeout=timeout_s) as response:
                    index = json.loads(response.read())
                entries = set(self.entry_models())
                if not any(m["name"] in entries and m.get("state") == "READY" for m in index):
                    return True
                time.sleep(0.1)
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return False
        return False

    def running(self) -> bool:
        """The server runs, or the supervisor owns it (and brings it back after a failure)."""
        if self.supervisor is not None and not self._stopping:
            return True
        process = self._process
        return process is not None and process.poll() is None

    def triton_ready(self) -> bool:
        """Triton's own strict readiness, on its HTTP port."""
        url = f"http://127.0.0.1:{self.triton_http_port}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def probe(self, timeout_s: float) -> bool:
        """A tiny inference through the entry model: True when it is served, or refused for
        overload, within ``timeout_s``; False on no answer or any other error."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.triton_http_port}/v2/models/{self._probe_model}/infer",
            data=_PROBE_BODY,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            urllib.request.urlopen(request, timeout=timeout_s).close()
        except urllib.error.HTTPError as exc:
            # Overload (a full queue: 503/429) is an answer of a live server; any other error
            # ("Stub process ... is not healthy": a stopped or wedged stub) is not service.
            detail = exc.read(512).decode(errors="replace")
            LOG.info("health probe answered %s: %s", exc.code, detail)
            return exc.code in (429, 503) or "queue" in detail.lower()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False
        return True

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise ServerStartError(f"tritonserver exited with code {code}\n{self.log_tail()}")
            if self.triton_ready():
                return
            time.sleep(0.25)
        raise ServerStartError(
            f"tritonserver not ready after {self.startup_timeout_s:.0f} s\n{self.log_tail()}"
        )

    def is_ready(self) -> bool:
        """Ready to serve: supervised, the supervisor's view (serving, and the latest probe
        answered in time) and Triton's strict readiness; unsupervised, Triton's alone."""
        if self.supervisor is not None and not self.supervisor.ready:
            return False
        return self.triton_ready()

    def log_tail(self, lines: int = 40) -> str:
        if self.verbose or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "--- tritonserver log (last lines) ---\n" + "\n".join(text[-lines:])

    def stop(self) -> int | None:
        """Stop gracefully: drain (new requests refused, in-flight ones finish), SIGTERM,
        SIGKILL after the grace; then remove the shared memory of this launch's stubs."""
        self._stopping = True
        if self.supervisor is not None:
            self.supervisor.signal_stop()
        with self._lock:
            process, self._process = self._process, None
        code = None
        if process is not None:
            if process.poll() is None:
                self.drain()
                self._stop_guard()  # Triton's exit waits for open HTTP connections: the guard's
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=self.options.exit_timeout_s + 10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)  # its own session: only what we started
                    process.wait()
            with contextlib.suppress(ProcessLookupError):  # stubs that outlived it
                os.killpg(process.pid, signal.SIGKILL)
            code = process.returncode
        if self.supervisor is not None:
            self.supervisor.stop()
        # Normally none is left; a stub killed by SIGKILL cannot remove its own region.
        remove_shm_regions(shm_regions(self.stub_shm_prefix))
        self._stop_guard()
        if self.mps is not None:  # after the server and its stubs: its clients
            self.mps.stop()  # an attached daemon keeps running
            self.mps = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        shutil.rmtree(self._workdir / "model_repository", ignore_errors=True)
        if code == 0 and not self._keep_log:
            shutil.rmtree(self._workdir, ignore_errors=True)  # a clean exit: nothing to look at
        elif process is not None and self.log_path.exists():
            LOG.warning("tritonserver exited with code %s; its log: %s", code, self.log_path)
        return code

    def _stop_guard(self) -> None:
        if self.guard is not None:
            self.guard.stop()
            self.guard = None
        if self.grpc_guard is not None:
            self.grpc_guard.stop()
            self.grpc_guard = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def add_model_param_argument(parser: argparse.ArgumentParser) -> None:
    """``--model-param KEY=VALUE`` (repeatable; ``parse_key_values`` reads the list)."""
    parser.add_argument(
        "--model-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="replace a model config parameter, e.g. resize_interpolation=area (repeatable)",
    )


def add_lever_arguments(parser: argparse.ArgumentParser) -> None:
    """``--segmentation-batch N``, ``--segmentation-queue-delay-us US``, ``--mps`` (the
    ``ServerOptions`` fields of the same names; ``bench/e2e.py`` takes them too)."""
    parser.add_argument(
        "--segmentation-batch",
        type=int,
        default=None,
        metavar="N",
        help="segmentation batches up to N frames, merging requests of several clients "
        "(>= the ensemble's max_batch_size; default: the repository's)",
    )
    parser.add_argument(
        "--segmentation-queue-delay-us",
        type=int,
        default=None,
        metavar="US",
        help="segmentation's max queue delay (default: the repository's)",
    )
    parser.add_argument(
        "--mps",
        action="store_true",
        help="run the server's processes under CUDA MPS (the daemon $CUDA_MPS_PIPE_DIRECTORY "
        "names, else one started for the server and stopped with it)",
    )


def parse_key_values(items: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}`` (ValueError naming an item without ``=``)."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bgblur-server", description="Serve the background-blur ensemble with Triton."
    )
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--segmentation-model", choices=model_names(), default=None)
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    parser.add_argument("--quiet", action="store_true", help="log to a file instead of stderr")
    parser.add_argument(
        "--address",
        default="127.0.0.1",
        help="address to bind HTTP, gRPC and metrics to (default loopback; 0.0.0.0: all)",
    )
    parser.add_argument(
        "--shared-memory",
        choices=("auto", "on", "off"),
        default="auto",
        help="client shared-memory registration: auto/on = admin-key holders, off = nobody",
    )
    parser.add_argument(
        "--no-supervisor", action="store_true", help="do not restart a dead stub or server"
    )
    parser.add_argument(
        "--triton-http-port",
        type=int,
        default=None,
        help="Triton's own HTTP port behind the guard, on 127.0.0.1 (default: a free one)",
    )
    parser.add_argument(
        "--triton-grpc-port",
        type=int,
        default=None,
        help="Triton's own gRPC port behind the guard, on 127.0.0.1 (default: a free one)",
    )
    parser.add_argument(
        "--no-guard",
        action="store_true",
        help="serve Triton's own ports on --http-port/--grpc-port, without the guards in front",
    )
    parser.add_argument(
        "--direct-model",
        action="store_true",
        help="also serve background_blur_direct: the service in one model (one backend hop)",
    )
    parser.add_argument(
        "--user",
        default="auto",
        help="the account tritonserver runs as (auto: started by root, bgblur or nobody when "
        "that account can run it; '' keeps this process's)",
    )
    add_model_param_argument(parser)
    add_lever_arguments(parser)
    args = parser.parse_args(argv)
    try:
        model_parameters = parse_key_values(args.model_param)
    except ValueError as exc:
        parser.error(str(exc))

    server = TritonServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        device=args.device,
        segmentation_model=args.segmentation_model,
        startup_timeout_s=args.startup_timeout,
        verbose=not args.quiet,
        address=args.address,
        shared_memory=args.shared_memory,
        supervise=not args.no_supervisor,
        model_parameters=model_parameters,
        direct_model=args.direct_model,
        guard=not args.no_guard,
        triton_http_port=args.triton_http_port,
        triton_grpc_port=args.triton_grpc_port,
        user=args.user or None,
        segmentation_batch=args.segmentation_batch,
        segmentation_queue_delay_us=args.segmentation_queue_delay_us,
        mps=args.mps,
        # A service retries a crashing start-up until --startup-timeout, then exits 1.
        start_attempts=None,
    )
    return serve_until_signal(server, "bgblur-server")


def serve_until_signal(server: TritonServer, name: str) -> int:
    """Start ``server``, serve until SIGINT/SIGTERM, stop it gracefully (drain, then stop).

    Returns 0 after a requested stop; 1 when it could not start, or stopped by itself (an
    unsupervised server that exited)."""
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        server.start()
    except ServerStartError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    print(
        f"{name}: ready on {server.device} — gRPC {server.grpc_url}, "
        f"HTTP {server.http_url}, metrics {server.metrics_url}. Ctrl-C stops.",
        file=sys.stderr,
        flush=True,
    )
    while not stop_requested and server.running():
        time.sleep(0.2)
    code = server.stop()
    print(f"{name}: stopped (tritonserver exit code {code})", file=sys.stderr)
    return 0 if stop_requested else 1


if __name__ == "__main__":
    sys.exit(main())
