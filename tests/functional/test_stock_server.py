"""The committed ``model_repository/`` as it is, served by a plain ``tritonserver`` (no launcher,
no rendering, no guard): the models load with Triton's default instance groups and the
ensemble answers, given the project's package on the Python stubs' path (docs/deploy.md)."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient

from bgblur.server.launcher import (
    MODEL_REPOSITORY,
    bundled_server_environment,
    free_port,
    prepare_backends,
    tritonserver_home,
)


def test_the_committed_repository_serves_under_a_stock_tritonserver(tmp_path) -> None:
    home = tritonserver_home()
    http, grpc_port = free_port(), free_port()
    log = tmp_path / "tritonserver.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                str(home / "bin" / "tritonserver"),
                f"--backend-directory={prepare_backends(home)}",
                f"--model-repository={MODEL_REPOSITORY}",
                f"--http-port={http}",
                f"--grpc-port={grpc_port}",
                f"--metrics-port={free_port()}",
                "--http-address=127.0.0.1",
                "--grpc-address=127.0.0.1",
                "--metrics-address=127.0.0.1",
                "--strict-readiness=true",
            ],
            env=bundled_server_environment(home),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        ready = False
        while time.monotonic() < deadline and process.poll() is None and not ready:
            try:
                url = f"http://127.0.0.1:{http}/v2/health/ready"
                with urllib.request.urlopen(url, timeout=2) as response:
                    ready = response.status == 200
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        assert ready, log.read_text()[-3000:]
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        frames = np.random.default_rng(0).integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)
        tensor = grpcclient.InferInput("FRAMES", list(frames.shape), "UINT8")
        tensor.set_data_from_numpy(frames)
        result = client.infer("background_blur", [tensor], client_timeout=120)
        assert result.as_numpy("BLURRED").shape == frames.shape
        client.close()
    finally:
        process.terminate()
        process.wait(60)
