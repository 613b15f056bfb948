"""Shared fixtures: GPU skipping and the real Triton server (started once per session)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from bgblur.device import cuda_device_count
from bgblur.models.registry import DEFAULT_MODEL
from bgblur.server.launcher import TritonServer


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if cuda_device_count() > 0:
        return
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA and CuPy")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


class ServerPool:
    """Real Triton servers keyed by (device, segmentation model), started on first use."""

    def __init__(self) -> None:
        self._servers: dict[tuple[str, str], TritonServer] = {}

    def get(self, device: str = "cpu", model: str = DEFAULT_MODEL) -> TritonServer:
        key = (device, model)
        if key not in self._servers:
            # No hang probe on the shared servers: tests there count requests exactly, and a
            # probe is a request (the hang tests start servers of their own).
            server = TritonServer(
                device=device, segmentation_model=model, supervision={"probe_interval_s": 0}
            )
            server.start()
            self._servers[key] = server
        return self._servers[key]

    def stop_all(self) -> None:
        for server in self._servers.values():
            server.stop()
        self._servers.clear()


@pytest.fixture(scope="session")
def server_pool() -> Iterator[ServerPool]:
    pool = ServerPool()
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session")
def triton_server(server_pool: ServerPool) -> TritonServer:
    """The CPU server with the default segmentation network (``grpc_url``, ``http_url``)."""
    return server_pool.get("cpu", DEFAULT_MODEL)


@pytest.fixture(scope="session")
def cupy() -> Any:
    """The ``cupy`` module; skips the test where no CUDA GPU (or no CuPy) is usable."""
    if cuda_device_count() == 0:
        pytest.skip("needs an NVIDIA GPU with CUDA and CuPy")
    import cupy

    return cupy


@pytest.fixture(scope="session")
def cache_dir() -> str | None:
    return os.environ.get("BGBLUR_CACHE")


@pytest.fixture(scope="session")
def astronaut_frames() -> np.ndarray:
    """Two real photos of a person (scikit-image's astronaut), 1 x 512x512 and flipped."""
    import skimage.data

    photo = skimage.data.astronaut()
    return np.ascontiguousarray(np.stack([photo, photo[:, ::-1]]))
