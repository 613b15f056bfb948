"""A GPU out of memory inside a model: the client gets ``UNAVAILABLE`` (retryable) "GPU out of
memory in <stage> for a batch of N frames of WxH: retry later or send smaller batches", the
model releases its cached memory and keeps serving (no stub restart), and the failure is
counted as ``bgblur_failed_requests_total{reason="gpu_oom"}``.

- ``test_simulated_oom_...`` (CPU, runs in CI): the segmentation model of a patched repository
  raises ``torch.OutOfMemoryError`` for batches of 5 frames. It checks what no unit test can:
  that Triton 2.51's ensemble hands the composing model's UNAVAILABLE on to the client (gRPC
  ``UNAVAILABLE``, HTTP 503) and that the server keeps serving.
- ``test_real_gpu_oom_...`` (``gpu``): a real one. The test process fills the GPU with CuPy
  allocations until ~64 MiB are free, then sends a 4K batch of 8 frames (199 MB).
"""

from __future__ import annotations

import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tritonclient.utils import InferenceServerException

from bgblur.server.launcher import MODEL_REPOSITORY, TritonServer
from bgblur.serving.metrics import parse_exposition

UNAVAILABLE = ("StatusCode.UNAVAILABLE", "503")
OOM_MESSAGE = re.compile(
    r"GPU out of memory in (preprocess|segmentation|postprocess) for a batch of (\d+) frames?"
    r"( of [0-9x and]+)?: retry later or send smaller batches"
)
SIMULATED_BATCH = 5  # the patched segmentation model runs out of "GPU memory" on 5 frames

_RUN = """    def _run(self, arrays, options):
        with nvtx_range("segmentation.network"):
            return [self.runtime(arrays[0])]
"""
_RUN_OOM = f"""    def _run(self, arrays, options):
        if arrays[0].shape[0] == {SIMULATED_BATCH}:  # test_gpu_oom: a simulated GPU OOM
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        with nvtx_range("segmentation.network"):
            return [self.runtime(arrays[0])]
"""


def failed_oom(server: TritonServer) -> dict[str, float]:
    """``bgblur_failed_requests_total{reason="gpu_oom"}`` per stage (its model label)."""
    url = f"http://{server.metrics_url}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        samples = parse_exposition(response.read().decode())
    counts = {}
    for (name, labels), value in samples.items():
        label = dict(labels)
        if name == "bgblur_failed_requests_total" and label.get("reason") == "gpu_oom":
            counts[label["model"]] = value
    return counts


def assert_oom_error(exc: InferenceServerException, stage: str | None, frames: int) -> str:
    """The error is UNAVAILABLE with the OOM message for ``frames`` frames; returns the stage."""
    message = exc.message()
    assert exc.status() in UNAVAILABLE, (exc.status(), message)
    match = OOM_MESSAGE.search(message)
    assert match is not None, message
    assert int(match[2]) == frames, message
    if stage is not None:
        assert match[1] == stage, message
    return match[1]


@pytest.fixture(scope="module")
def oom_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repository = tmp_path_factory.mktemp("oom") / "model_repository"
    shutil.copytree(MODEL_REPOSITORY, repository, ignore=shutil.ignore_patterns("__pycache__"))
    model = Path(repository, "segmentation", "1", "model.py")
    text = model.read_text()
    assert text.count(_RUN) == 1, "segmentation model.py changed: update the patch"
    model.write_text(text.replace(_RUN, _RUN_OOM))
    with TritonServer(
        device="cpu", segmentation_model="fixed_ellipse", model_repository=repository
    ) as server:
        yield server


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_simulated_oom_answers_unavailable_and_the_model_keeps_serving(
    oom_server: TritonServer, rel: Any, protocol: str
) -> None:
    server = oom_server
    client = rel.make_client(server, protocol)
    try:
        rel.infer(client, rel.frames(1, 48, 64))  # warm
        before = failed_oom(server)
        for _ in range(2):  # and again: nothing is left broken by the first
            with pytest.raises(InferenceServerException) as info:
                rel.infer(client, rel.frames(SIMULATED_BATCH, 48, 64))
            assert_oom_error(info.value, "segmentation", SIMULATED_BATCH)
            assert f"of {SIMULATED_BATCH} frames of 64x64:" in info.value.message()
            # the same model serves the next request at once
            good = rel.frames(2, 48, 64)
            assert rel.infer(client, good).shape == good.shape
        after = failed_oom(server)
    finally:
        client.close()
    assert after.get("segmentation", 0) - before.get("segmentation", 0) == 2
    assert server.is_ready()
    assert server.supervisor is not None and not server.supervisor.events  # no stub restarted


# --------------------------------------------------------------------------------------------
# GPU (not run on the CPU machine)
# --------------------------------------------------------------------------------------------

LEAVE_FREE_BYTES = 64 << 20  # what the test leaves free on the GPU
BATCH_4K = (8, 2160, 3840)  # 199,065,600 bytes: the per-request maximum


def fill_gpu(cupy: Any, leave_bytes: int) -> list[Any]:
    """Raw ``cudaMalloc`` blocks (no memory pool) until about ``leave_bytes`` are free on the
    device (free memory counts every process: the server's stubs too)."""
    blocks = []
    chunk = 1 << 30
    errors = (cupy.cuda.memory.OutOfMemoryError, cupy.cuda.runtime.CUDARuntimeError)
    while chunk >= 1 << 20:
        free, _ = cupy.cuda.runtime.memGetInfo()
        if free - chunk < leave_bytes:
            chunk //= 2
            continue
        try:
            blocks.append(cupy.cuda.memory.Memory(chunk))
        except errors:
            chunk //= 2
    return blocks


@pytest.fixture(scope="module")
def gpu_server(cupy: Any) -> Iterator[TritonServer]:
    """A server of its own: its stubs' memory pools hold nothing from other tests' requests
    (cached blocks would serve the 4K batch without touching the filled device)."""
    with TritonServer(device="gpu") as server:
        yield server


@pytest.mark.gpu
@pytest.mark.slow
def test_real_gpu_oom_answers_unavailable_and_serves_once_memory_is_back(
    gpu_server: TritonServer, cupy: Any, rel: Any
) -> None:
    server = gpu_server
    client = rel.make_client(server, "grpc")
    batch_4k = rel.frames(*BATCH_4K)
    stage = ""  # the stage named in the OOM error
    try:
        rel.infer(client, rel.frames(1, 48, 64))  # every stage warm, at a small size
        before = failed_oom(server)
        blocks = fill_gpu(cupy, LEAVE_FREE_BYTES)
        free, total = cupy.cuda.runtime.memGetInfo()
        print(f"filled: {len(blocks)} blocks, {free >> 20} MiB of {total >> 20} MiB free")
        try:
            assert free < batch_4k.nbytes // 2, f"could not fill the GPU: {free >> 20} MiB free"
            started = time.monotonic()
            try:
                rel.infer(client, batch_4k, client_timeout=60)
            except InferenceServerException as exc:
                stage = assert_oom_error(exc, None, BATCH_4K[0])
                print(f"OOM in {stage} answered in {time.monotonic() - started:.2f} s: {exc}")
            else:
                pytest.fail(
                    f"the 4K batch of 8 was served with {free >> 20} MiB free on the GPU: the "
                    "test did not force an out of memory (a stub's pool held enough?)"
                )
            assert server.is_ready()
        finally:
            del blocks
            cupy.get_default_memory_pool().free_all_blocks()
        # memory back: the same models serve, small and 4K, without a restart
        good = rel.frames(2, 48, 64)
        assert rel.infer(client, good).shape == good.shape
        assert rel.infer(client, batch_4k, client_timeout=60).shape == batch_4k.shape
        after = failed_oom(server)
    finally:
        client.close()
    assert after.get(stage, 0) - before.get(stage, 0) == 1, (before, after)
    assert server.is_ready()
    assert server.supervisor is not None and not server.supervisor.events
