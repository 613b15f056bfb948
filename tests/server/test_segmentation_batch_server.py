"""``segmentation_batch`` on the real embedded Triton server: the ensemble (max_batch_size 8)
loads with a segmentation step that batches up to 32 frames, requests of several clients are
merged into one segmentation execution, and every client gets its own frames back, as it would
without the option.

A CPU server with ``fixed_ellipse`` (no weights, a cheap network) and a long segmentation
queue delay, so that the requests sent at once are still queued together on a shared 2-core
machine; the GPU variant runs the same on a KIND_GPU server (CUDA graphs up to 32)."""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np
import pytest

from bgblur.server.launcher import TritonServer
from bgblur_client.transport import BlurClient

CLIENTS = 4
# Not one of segmentation's preferred batch sizes (8, 16, 32) nor a sum of them that reaches one
# (6, 12, 18, 24): a request of 8 frames would run at once on its own and the merge would depend
# on two requests arriving at the same instant; these wait out the queue delay and meet.
FRAMES_PER_REQUEST = 6


def frames_of(index: int) -> np.ndarray:
    """Client ``index``'s request: ``FRAMES_PER_REQUEST`` frames of 48x64 (values by index)."""
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, (FRAMES_PER_REQUEST, 48, 64, 3), dtype=np.uint8)


def merged_run(device: str) -> None:
    server = TritonServer(
        device=device,
        segmentation_model="fixed_ellipse",
        segmentation_batch=32,
        segmentation_queue_delay_us=1_500_000,  # the 4 requests meet in segmentation's queue
        supervision={"probe_interval_s": 0},
    )
    with server:
        url = server.grpc_url
        with BlurClient(url) as client:
            singles = [client.blur(frames_of(i)).blurred_nhwc_u8 for i in range(CLIENTS)]
            before = client.statistics()
        start = threading.Barrier(CLIENTS)

        def send(index: int) -> np.ndarray:
            with BlurClient(url) as own:
                own.blur(frames_of(index))  # connection and first call outside the window
                start.wait()
                return own.blur(frames_of(index)).blurred_nhwc_u8

        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            merged = list(pool.map(send, range(CLIENTS)))
        with BlurClient(url) as client:
            split = client.statistics().since(before)
    segmentation = split["segmentation"]
    assert segmentation["frames"] == 2 * CLIENTS * FRAMES_PER_REQUEST
    # on average an execution ran more frames than one request of the ensemble may hold (8):
    # requests of several clients were merged into one network run
    assert segmentation["frames_per_execution"] > 8, segmentation
    assert split["background_blur"]["frames"] == 2 * CLIENTS * FRAMES_PER_REQUEST
    for index in range(CLIENTS):
        blurred = np.asarray(merged[index])
        assert blurred.shape == (FRAMES_PER_REQUEST, 48, 64, 3) and blurred.dtype == np.uint8
        np.testing.assert_array_equal(blurred, np.asarray(singles[index]))


@pytest.mark.slow
def test_requests_of_several_clients_share_one_segmentation_batch_cpu() -> None:
    merged_run("cpu")


@pytest.mark.gpu
def test_requests_of_several_clients_share_one_segmentation_batch_gpu() -> None:
    merged_run("gpu")
