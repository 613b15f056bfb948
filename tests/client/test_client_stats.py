"""The per-stage split (bgblur_client.stats) against the real server's statistics: after a known
number of requests, every stage of the ensemble reports exactly those requests and frames, and
its parts add up to no more than the whole request."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bgblur_client.transport import BlurClient

STAGES = ("preprocess", "segmentation", "postprocess")


def all_counted(split: dict, requests: int) -> bool:
    """Whether the ensemble and every stage have counted at least ``requests`` requests."""
    return all(
        split.get(m, {}).get("requests", 0) >= requests for m in ("background_blur", *STAGES)
    )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_split_counts_every_stage_and_adds_up(
    triton_server, astronaut_frames: np.ndarray, protocol: str
) -> None:
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    with BlurClient(url, protocol=protocol) as client:
        before = client.statistics()
        for _ in range(3):
            client.blur(astronaut_frames)  # 2 frames per request
        # Triton records a request's statistics as it releases it, which can come a moment after
        # the client has its response: wait (briefly) for the last one to be counted.
        deadline = time.monotonic() + 5.0
        split = client.statistics().since(before)
        while not all_counted(split, 3) and time.monotonic() < deadline:
            time.sleep(0.05)
            split = client.statistics().since(before)

    assert split["background_blur"]["requests"] == 3
    assert split["background_blur"]["frames"] == 6
    for stage in STAGES:
        row = split[stage]
        assert row["requests"] == 3 and row["frames"] == 6
        assert 1 <= row["executions"] <= 3
        assert row["frames_per_execution"] == 6 / row["executions"]
        parts = row["queue_us_per_request"] + sum(
            row[f"compute_{p}_us_per_request"] for p in ("input", "infer", "output")
        )
        assert 0 < row["compute_infer_us_per_request"] <= parts <= row["request_us"] * 1.01
    # The ensemble's request spans its stages' queue and compute, which run one after the other per
    # request. (A stage's request_us also counts its release, which Triton may finish after the
    # ensemble has answered, so the stages' request_us need not add up under the ensemble's.)
    stages_busy_us = sum(
        split[s]["queue_us_per_request"]
        + sum(split[s][f"compute_{p}_us_per_request"] for p in ("input", "infer", "output"))
        for s in STAGES
    )
    assert stages_busy_us <= split["background_blur"]["request_us"] * 1.01
    assert set(split) == {"background_blur", *STAGES}  # idle models are left out
