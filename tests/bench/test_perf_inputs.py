"""bench/perf.py's perf_analyzer input data, checked against what the real server serves: for
the ensemble and each composing model, the files are exactly the model's inputs with the
model's dtypes and dims, and a request built from them succeeds. (perf_analyzer itself needs
glibc >= 2.38: it runs on the GPU machine, not here.)"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

PERF = Path(__file__).resolve().parents[2] / "bench" / "perf.py"
DTYPES = {"UINT8": np.uint8, "FP16": np.float16}


def load_perf():
    spec = importlib.util.spec_from_file_location("bench_perf", PERF)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("target", ["background_blur", "preprocess", "segmentation", "postprocess"])
def test_input_data_matches_the_served_model_and_runs(
    triton_server, tmp_path: Path, target: str
) -> None:
    perf = load_perf()
    tensors = perf.input_tensors(target, "720p")
    shapes = perf.write_input_data(tmp_path, tensors)

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    metadata = client.get_model_metadata(target, as_json=True)
    inputs = {i["name"]: i for i in metadata["inputs"]}
    config = client.get_model_config(target, as_json=True)["config"]
    required = sorted(i["name"] for i in config["input"] if not i.get("optional", False))
    assert sorted(p.name for p in tmp_path.iterdir()) == required  # optional BACKGROUND left out
    assert sorted(shapes) == sorted(
        f"{name}:" + ",".join(map(str, array.shape)) for name, array in tensors.items()
    )
    requests = []
    for name, array in tensors.items():
        declared = inputs[name]
        assert np.dtype(DTYPES[declared["datatype"]]) == array.dtype, name
        dims = [int(d) for d in declared["shape"]][1:]  # past the batch dimension (-1)
        assert len(dims) == array.ndim, name
        assert all(d in (-1, n) for d, n in zip(dims, array.shape, strict=True)), name
        raw = (tmp_path / name).read_bytes()
        assert len(raw) == array.nbytes
        batch = np.frombuffer(raw, dtype=array.dtype).reshape((1, *array.shape))
        tensor = grpcclient.InferInput(name, list(batch.shape), declared["datatype"])
        tensor.set_data_from_numpy(batch)
        requests.append(tensor)
    result = client.infer(target, requests)  # raises on any error
    outputs = {o["name"] for o in metadata["outputs"]}
    assert all(result.as_numpy(name) is not None for name in outputs)
    client.close()


def test_make_perf_refuses_clearly_without_a_usable_perf_analyzer(tmp_path: Path) -> None:
    perf = load_perf()
    ok, libc = perf.glibc_ok()
    if ok and __import__("shutil").which("perf_analyzer"):
        pytest.skip(f"perf_analyzer runs here ({libc})")
    done = subprocess.run(
        [sys.executable, str(PERF), "--out-dir", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "cannot run perf_analyzer here" in done.stderr and "glibc >= 2.38" in done.stderr
