"""The segmentation networks alone, per runtime: latency at batch 1 and frames/s per batch size.

Figures, not tests. Per network (``selfie_general``, ``selfie_landscape``, ``fcn_resnet101``)
and runtime:

* on a GPU: torch eager fp16 (channels_last, BatchNorm folded, warmed up at load), torch with
  one CUDA graph per measured batch size (``TorchRuntime``'s serving path: static buffers,
  captured at load), and torch.compile (Inductor kernels inside the same CUDA graphs), the
  latter in a child process that is killed when it does not finish within
  ``--compile-timeout-s`` (default 60 s of compile and capture) plus the measurement time;
* on the CPU: torch eager fp32 channels_last and ONNX Runtime (CPUExecutionProvider, fp32
  graph), both with every core this process may use.

Latency at batch 1 is the median of ``--latency-iters`` calls (CUDA events on the GPU, recorded
on the caller's stream around the whole call: the runtime's stream waits on it first and
synchronizes before returning; ``time.perf_counter`` on the CPU). Frames/s at batch B are
``B * calls / seconds`` over back-to-back calls for about ``--seconds`` (each call synchronized,
as served). Inputs are random, of the network's input size, float16 (as the ensemble feeds
them). ``fcn_resnet101`` runs with its deterministic random fp16-safe initialization
(``bgblur.models.fcn.fp16_safe_init_``) unless pretrained weights are found: its masks are then
meaningless, its cost is the network's.

Writes JSON (date, device, command, versions, one entry per model and runtime; rewritten after
each entry, so a run cut short keeps what it measured) and prints a Markdown table::

    python bench/models.py --out bench/results/models-h100.json            # the GPU
    python bench/models.py --device cpu --out bench/results/models-cpu.json
    python bench/models.py --runtimes compile --merge bench/results/models-h100.json ...
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "backends", ROOT / "client"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import torch  # noqa: E402

from bgblur.device import Device  # noqa: E402
from bgblur.models.registry import get_model_spec  # noqa: E402

MODELS = ("fcn_resnet101", "selfie_general", "selfie_landscape")
GPU_BATCHES = (1, 4, 8, 16, 32, 64)
CPU_BATCHES = (1, 4, 8, 16, 32, 64)
CPU_BATCHES_FCN = (1, 4)  # ~0.3 s a frame on 2 cores: larger batches take minutes
TARGETS = (
    # (model, batch, metric, bound, text)
    (
        "fcn_resnet101",
        16,
        "ms_per_frame",
        1.0,
        "fcn_resnet101 fp16 224x224: <= 1.0 ms/frame at batch 16",
    ),
    (
        "selfie_general",
        64,
        "frames_per_s",
        10_000.0,
        "selfie_general: >= 10,000 frames/s at batch 64",
    ),
    (
        "selfie_landscape",
        64,
        "frames_per_s",
        10_000.0,
        "selfie_landscape: >= 10,000 frames/s at batch 64",
    ),
)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def _inputs(spec: Any, batch: int, device: Device) -> Any:
    h, w = spec.input_hw
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 3, h, w)).astype(np.float16)
    if device.is_gpu:
        return torch.from_numpy(x).to(device.torch_device)
    return x


def _latency_ms(runtime: Any, x: Any, iters: int, device: Device) -> list[float]:
    times = []
    runtime(x)
    if device.is_gpu:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(iters):
            start.record()
            runtime(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            runtime(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def _throughput(runtime: Any, x: Any, seconds: float, min_calls: int, max_calls: int) -> dict:
    runtime(x)  # a first call outside the timing (a first copy, a first allocation)
    calls = 0
    t0 = time.perf_counter()
    while True:
        runtime(x)
        calls += 1
        elapsed = time.perf_counter() - t0
        if calls >= max_calls or (elapsed >= seconds and calls >= min_calls):
            break
    batch = int(x.shape[0])
    return {
        "frames_per_s": round(batch * calls / elapsed, 1),
        "ms_per_frame": round(elapsed * 1e3 / (batch * calls), 4),
        "ms_per_call": round(elapsed * 1e3 / calls, 4),
        "calls": calls,
    }


def _summary(times: list[float]) -> dict:
    a = np.asarray(times)
    return {
        "median_ms": round(float(np.median(a)), 4),
        "p10_ms": round(float(np.percentile(a, 10)), 4),
        "p90_ms": round(float(np.percentile(a, 90)), 4),
        "n": len(times),
    }


def measure(
    runtime: Any, spec: Any, device: Device, batches: tuple[int, ...], args: Any, deadline: float
) -> dict:
    """Latency at batch 1 and frames/s per batch of ``runtime``."""
    result: dict[str, Any] = {"throughput": {}}
    if 1 in batches or not batches:
        iters = args.latency_iters
        if not device.is_gpu and spec.name.startswith("fcn"):
            iters = min(iters, 5)
        result["latency_b1"] = _summary(
            _latency_ms(runtime, _inputs(spec, 1, device), iters, device)
        )
    for batch in batches:
        if time.time() > deadline:
            result["throughput"][str(batch)] = {"skipped": "time budget"}
            continue
        min_calls = 2 if not device.is_gpu and spec.name.startswith("fcn") else 3
        result["throughput"][str(batch)] = _throughput(
            runtime, _inputs(spec, batch, device), args.seconds, min_calls, 10_000
        )
    return result


# --------------------------------------------------------------------------------------------
# Runtimes
# --------------------------------------------------------------------------------------------


def build(
    kind: str, spec: Any, device: Device, batches: tuple[int, ...], compile_mode: str | None = None
) -> Any:
    from bgblur.runtimes.torch_runtime import TorchRuntime

    if kind == "eager":
        return TorchRuntime(spec, device, cuda_graphs=False, batch_sizes=batches)
    if kind == "graphs":
        return TorchRuntime(spec, device, cuda_graphs=True, batch_sizes=batches)
    if kind == "compile":
        return TorchRuntime(
            spec, device, cuda_graphs=True, batch_sizes=batches, compile=compile_mode
        )
    if kind == "torch-cpu":
        return TorchRuntime(spec, device)
    if kind == "onnxruntime-cpu":
        from bgblur.runtimes.onnx_runtime import OnnxRuntimeCPU

        return OnnxRuntimeCPU(spec, device)
    raise ValueError(kind)


RUNTIME_LABELS = {
    "eager": "torch eager fp16",
    "graphs": "torch CUDA graphs fp16",
    "compile": "torch.compile ({mode}) + CUDA graphs fp16",
    "torch-cpu": "torch eager fp32 (CPU)",
    "onnxruntime-cpu": "onnxruntime fp32 (CPU)",
}


def _runtime_key(kind: str, compile_mode: str | None, tag: str | None) -> str:
    key = kind if kind != "compile" else f"compile-{compile_mode}"
    return f"{key}@{tag}" if tag else key


def _vs_eager(runtime: Any, spec: Any, device: Device, batch: int) -> dict:
    """Max and mean |compiled - eager| (both fp16 on the GPU) on one random batch."""
    from bgblur.runtimes.torch_runtime import TorchRuntime

    eager = TorchRuntime(spec, device, cuda_graphs=False, batch_sizes=(batch,), warmup=1)
    x = _inputs(spec, batch, device)
    diff = (runtime(x).float() - eager(x).float()).abs()
    return {"batch": batch, "max_abs": float(diff.max()), "mean_abs": float(diff.mean())}


def run_one(
    kind: str,
    model: str,
    device: Device,
    batches: tuple[int, ...],
    args: Any,
    deadline: float,
    compile_mode: str | None = None,
) -> dict:
    spec = get_model_spec(model)
    entry: dict[str, Any] = {
        "model": model,
        "input_hw": list(spec.input_hw),
        "runtime": _runtime_key(kind, compile_mode, getattr(args, "tag", None)),
        "label": RUNTIME_LABELS[kind].format(mode=compile_mode),
        "batches": list(batches),
    }
    t0 = time.perf_counter()
    runtime = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runtime = build(kind, spec, device, batches, compile_mode)
            entry["load_s"] = round(time.perf_counter() - t0, 2)
            entry["runtime_name"] = runtime.name
            entry["describe"] = runtime.describe()
            if model.startswith("fcn"):
                from bgblur.models.fcn import resolve_weights

                path = resolve_weights(None, None)
                entry["weights"] = (
                    "random fp16-safe init (bgblur.models.fcn.fp16_safe_init_): masks meaningless"
                    if path is None
                    else str(path)
                )
            entry.update(measure(runtime, spec, device, batches, args, deadline))
            if kind == "compile":
                entry["vs_eager"] = _vs_eager(runtime, spec, device, min(batches[-1], 8))
    except Exception as exc:  # record it and go on with the next entry
        entry["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        del runtime
        gc.collect()
        if device.is_gpu:
            torch.cuda.empty_cache()
    return entry


def run_compile_child(
    model: str, mode: str, batches: tuple[int, ...], args: Any, deadline: float
) -> dict:
    """``torch.compile`` in a child process, killed past the compile limit plus measuring."""
    limit = min(args.compile_timeout_s + 30 + 10 * len(batches), deadline - time.time())
    entry = {
        "model": model,
        "runtime": _runtime_key("compile", mode, args.tag),
        "label": RUNTIME_LABELS["compile"].format(mode=mode),
        "batches": list(batches),
    }
    if limit < 20:
        entry["skipped"] = "time budget"
        return entry
    cmd = [
        sys.executable,
        __file__,
        "--child-compile",
        model,
        "--compile-mode",
        mode,
        "--batches",
        ",".join(map(str, batches)),
        "--seconds",
        str(args.seconds),
        "--latency-iters",
        str(args.latency_iters),
        "--compile-timeout-s",
        str(args.compile_timeout_s),
        *(["--tag", args.tag] if args.tag else []),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        entry["error"] = (
            f"did not compile, capture and measure within {limit:.0f} s "
            f"(compile limit {args.compile_timeout_s} s): killed"
        )
        sys.stderr.write(err[-3000:])
        return entry
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    entry["error"] = f"child exited {proc.returncode} without a result: {err[-1500:]}"
    sys.stderr.write(err[-3000:])
    return entry


def child_compile(args: Any) -> int:
    device = Device("gpu", 0)
    batches = tuple(int(b) for b in args.batches.split(","))
    entry = run_one(
        "compile",
        args.child_compile,
        device,
        batches,
        args,
        time.time() + 600,
        compile_mode=args.compile_mode,
    )
    if "load_s" in entry:
        entry["compiled_within_limit"] = entry["load_s"] <= args.compile_timeout_s
    print("RESULT " + json.dumps(entry), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# The CPU choice: the runtimes interleaved, round after round (a shared machine's noise drifts)
# --------------------------------------------------------------------------------------------

AB_CONTENDERS = ("torch-cpu", "torch-cpu-nchw", "onnxruntime-cpu")


def _busy(stop_at: float) -> None:  # a child process: one core's worth of NumPy work
    a = np.random.default_rng(0).random((256, 256))
    while time.time() < stop_at:
        a = np.tanh(a @ a.T / 256)


def ab_compare(
    model: str, batches: tuple[int, ...], rounds: int, calls: int, background: int = 0
) -> dict:
    """Median ms per call of each CPU contender at each batch, measured in interleaved rounds
    (the order rotates every round); per round the median of ``calls`` calls."""
    from bgblur.runtimes.onnx_runtime import OnnxRuntimeCPU
    from bgblur.runtimes.torch_runtime import TorchRuntime

    spec = get_model_spec(model)
    cpu = Device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runtimes = {
            "torch-cpu": TorchRuntime(spec, cpu),
            "torch-cpu-nchw": TorchRuntime(spec, cpu, channels_last=False),
            "onnxruntime-cpu": OnnxRuntimeCPU(spec, cpu),
        }
    out: dict[str, Any] = {
        "model": model,
        "rounds": rounds,
        "calls_per_round": calls,
        "background_busy_processes": background,
        "loadavg_1min_before": round(os.getloadavg()[0], 2),
    }
    busy = []
    if background:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        busy = [ctx.Process(target=_busy, args=(time.time() + 3600,)) for _ in range(background)]
        for proc in busy:
            proc.start()
    try:
        _ab_rounds(runtimes, spec, batches, rounds, calls, out)
    finally:
        for proc in busy:
            proc.terminate()
            proc.join()
    return out


def _ab_rounds(
    runtimes: dict, spec: Any, batches: tuple[int, ...], rounds: int, calls: int, out: dict
) -> None:
    cpu = Device("cpu")
    for batch in batches:
        x = _inputs(spec, batch, cpu)
        per_round: dict[str, list[float]] = {k: [] for k in runtimes}
        for r in range(rounds):
            order = list(runtimes)[r % len(runtimes) :] + list(runtimes)[: r % len(runtimes)]
            for kind in order:
                runtimes[kind](x)
                times = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    runtimes[kind](x)
                    times.append((time.perf_counter() - t0) * 1e3)
                per_round[kind].append(float(np.median(times)))
        ort_wins = sum(
            o < t for o, t in zip(per_round["onnxruntime-cpu"], per_round["torch-cpu"], strict=True)
        )
        out[str(batch)] = {
            **{k: round(float(np.median(v)), 3) for k, v in per_round.items()},
            "onnxruntime_won_rounds_vs_torch": f"{ort_wins}/{rounds}",
        }
    out["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    medians = [(out[str(b)]["onnxruntime-cpu"], out[str(b)]["torch-cpu"]) for b in batches]
    out["faster"] = (
        "onnxruntime"
        if all(o < t for o, t in medians)
        else ("torch" if all(o > t for o, t in medians) else "mixed")
    )


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def device_description(device: Device) -> str:
    if device.is_gpu:
        return torch.cuda.get_device_name(device.index)
    name = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from bgblur.runtimes.onnx_runtime import cpu_cores

    return f"{name}, {cpu_cores()} cores"


def targets_report(results: list[dict]) -> list[dict]:
    """Each target: its value per runtime that measured it, the best one, met or not."""
    rows = []
    for model, batch, metric, bound, text in TARGETS:
        values = {}
        for entry in results:
            point = entry.get("throughput", {}).get(str(batch), {})
            if entry.get("model") == model and metric in point:
                values[entry["runtime"]] = point[metric]
        if not values:
            rows.append({"target": text, "met": None})
            continue
        lower = metric == "ms_per_frame"
        best = (min if lower else max)(values, key=values.__getitem__)
        value = values[best]
        met = value <= bound if lower else value >= bound
        rows.append({"target": text, "best": best, metric: value, "met": met, "by_runtime": values})
    return rows


def markdown(report: dict) -> str:
    batches = sorted({int(b) for e in report["results"] for b in e.get("throughput", {})})
    head = ["model", "runtime", "load s", "b1 latency ms"] + [f"fps b{b}" for b in batches]
    head.append("ms/frame b16" if 16 in batches else "ms/frame b4")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in report["results"]:
        if "error" in e or "skipped" in e:
            why = e.get("error") or e.get("skipped")
            lines.append(f"| {e['model']} | {e['runtime']} | {why[:90]} |" + " |" * (len(head) - 3))
            continue
        cells = [e["model"], e["runtime"], f"{e.get('load_s', float('nan')):.1f}"]
        lat = e.get("latency_b1", {}).get("median_ms")
        cells.append(f"{lat:.3f}" if lat is not None else "-")
        for b in batches:
            p = e["throughput"].get(str(b), {})
            cells.append(f"{p['frames_per_s']:,.0f}" if "frames_per_s" in p else "-")
        key = "16" if 16 in batches else "4"
        p = e["throughput"].get(key, {})
        cells.append(f"{p['ms_per_frame']:.3f}" if "ms_per_frame" in p else "-")
        lines.append("| " + " | ".join(cells) + " |")
    for t in report.get("targets", []):
        status = {True: "MET", False: "NOT MET", None: "not measured"}[t["met"]]
        value = {k: v for k, v in t.items() if k not in ("target", "met")}
        lines.append(f"\n- {t['target']}: {status} {value}")
    for row in report.get("cpu_ab", []):
        lines.append(f"\n- CPU A/B {row['model']} (median ms per call, interleaved rounds): {row}")
    return "\n".join(lines)


def write(report: dict, path: Path | None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument(
        "--runtimes",
        default=None,
        help="GPU: graphs,eager,compile (default all); CPU: torch-cpu,onnxruntime-cpu",
    )
    p.add_argument("--batches", default=None, help="default 1,4,8,16,32,64 (CPU fcn: 1,4)")
    p.add_argument("--compile-batches", default="1,16,64")
    p.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile modes, comma-separated (default: default)",
    )
    p.add_argument("--compile-timeout-s", type=float, default=60.0)
    p.add_argument("--seconds", type=float, default=0.25, help="per throughput point")
    p.add_argument("--latency-iters", type=int, default=50)
    p.add_argument("--deadline", type=float, default=None, help="epoch seconds to stop by")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--merge",
        type=Path,
        default=None,
        help="start from this report (entries measured again are replaced)",
    )
    p.add_argument("--tag", default=None, help="appended to the runtime names (runtime@tag)")
    p.add_argument("--ab-rounds", type=int, default=7, help="CPU A/B rounds (0: none)")
    p.add_argument("--ab-calls", type=int, default=10, help="calls per round")
    p.add_argument(
        "--ab-background",
        default="0",
        help="busy processes beside the A/B, comma-separated counts (e.g. 0,1: quiet, then one "
        "core taken, as by another stage of the served pipeline)",
    )
    p.add_argument("--child-compile", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_compile:
        return child_compile(args)

    device_kind = args.device
    if device_kind == "auto":
        device_kind = "gpu" if torch.cuda.is_available() else "cpu"
    device = Device(device_kind, 0)
    deadline = args.deadline or (time.time() + 3600)
    models = [m for m in args.models.split(",") if m]
    kinds = (
        args.runtimes or ("graphs,eager,compile" if device.is_gpu else "torch-cpu,onnxruntime-cpu")
    ).split(",")
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_description(device),
        "device_kind": device.kind,
        "command": "python bench/models.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "notes": [
            "latency_b1: median of N calls at batch 1 (CUDA events on the GPU, perf_counter on "
            "the CPU), each call synchronized; throughput: back-to-back calls, frames/s",
            "fcn_resnet101: random fp16-safe weights (fp16_safe_init_) unless pretrained ones "
            "are found: masks meaningless, cost the network's",
            "GPU runtimes: fp16, channels_last, BatchNorm folded, cudnn.benchmark; CUDA graphs "
            "captured at load for every measured batch size (no padding in these figures)",
        ],
        "results": [],
    }
    try:
        import onnxruntime

        report["versions"]["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if device.is_gpu:
        report["versions"]["cuda"] = torch.version.cuda
        report["versions"]["cudnn"] = torch.backends.cudnn.version()
    else:
        report["versions"]["torch_threads"] = torch.get_num_threads()
    if args.merge and args.merge.is_file():
        old = json.loads(args.merge.read_text())
        report["results"] = old.get("results", [])
        report["command"] = old.get("command", "") + " ; " + report["command"]
        report["date"] = old.get("date", "") + " ; " + report["date"]
        if "cpu_ab" in old:
            report["cpu_ab"] = old["cpu_ab"]

    def record(entry: dict) -> None:
        key = (entry.get("model"), entry.get("runtime"))
        report["results"] = [
            e for e in report["results"] if (e.get("model"), e.get("runtime")) != key
        ]
        report["results"].append(entry)
        report["targets"] = targets_report(report["results"]) if device.is_gpu else []
        write(report, args.out)
        brief = {k: entry.get(k) for k in ("model", "runtime", "load_s", "error", "skipped")}
        brief["latency_b1_ms"] = entry.get("latency_b1", {}).get("median_ms")
        brief["fps"] = {b: v.get("frames_per_s") for b, v in entry.get("throughput", {}).items()}
        print(json.dumps(brief), flush=True)

    for kind in kinds:
        if kind in ("compile", "none", ""):
            continue
        for model in models:
            if args.batches:
                batches = tuple(int(b) for b in args.batches.split(","))
            elif device.is_gpu:
                batches = GPU_BATCHES
            else:
                batches = CPU_BATCHES_FCN if model.startswith("fcn") else CPU_BATCHES
            if time.time() > deadline - 10:
                key = _runtime_key(kind, None, args.tag)
                record({"model": model, "runtime": key, "skipped": "time budget"})
                continue
            record(run_one(kind, model, device, batches, args, deadline))
    if "compile" in kinds and device.is_gpu:
        compile_batches = tuple(int(b) for b in args.compile_batches.split(","))
        for mode in args.compile_mode.split(","):
            for model in models:
                record(run_compile_child(model, mode, compile_batches, args, deadline))
    if not device.is_gpu and args.ab_rounds > 0:
        report["cpu_ab"] = []
        for background in (int(n) for n in args.ab_background.split(",")):
            for model in models:
                fcn = model.startswith("fcn")
                row = ab_compare(
                    model,
                    (1, 4),
                    rounds=min(args.ab_rounds, 3) if fcn else args.ab_rounds,
                    calls=1 if fcn else args.ab_calls,
                    background=background,
                )
                report["cpu_ab"].append(row)
                write(report, args.out)
                print(json.dumps(row), flush=True)
    print()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
