#!/usr/bin/env bash
# GPU runs as phases that each fit one command of at most 10 minutes on a GPU host that receives
# at most 64 MiB of working tree a command and has no package index. Logs, JSON and CSV land in
# $OUT (default out/device).
#
# On the CPU machine, once (the bundle builder ../shared/gpu/bundle.sh packs the wheels):
#   bash bench/device_session.sh bundle [--dali]
#     .gpu-bundle/: Triton 2.51 (from nvidia-pytriton), tritonclient, PyNvVideoCodec (NVDEC),
#     the HTTP client; .gpu-part-N/: PyAV 18.1 (the video paths and tests; 36 MB, too large to
#     travel beside the bundle), opencv-contrib-python-headless 5.0.0.93 (2 parts: ximgproc's
#     jointBilateralFilter for the reference CPU pipeline; the GPU host's own OpenCV has no
#     ximgproc and the NumPy twin would make that baseline ~3x slower than it is) and, with
#     --dali, nvidia-dali-cuda130 2.4 (4 parts). Checks that every command's tree stays under
#     64 MiB.
# On the GPU host, back to back while it is warm:
#   carry [".gpu-part-N"]            bash .gpu-part-N/stash.sh                 (each N, first)
#   carry [".gpu-bundle", ".cache"]  source .gpu-bundle/setup.sh && bash bench/device_session.sh PHASE
# PHASE (each ends well inside 10 minutes):
#   bundle-serving a smaller bundle for the serving phases below (no video parts): Triton,
#                  tritonclient (gRPC, HTTP), perf_analyzer, aiohttp (the HTTP guard)
#   hardening-tests  pytest -m gpu: functional, reliability, client (KIND_GPU servers behind the
#                  guard and the supervisor; CUDA shared memory with the admin key)
#   hardening-quick  the GPU serving tests and the gRPC/HTTP guards' cost, in one command
#   hardening-bench  the guard's cost at 1080p (bench/guard.py), CUDA shm throughput through the
#                  key-restricted registration (bench/e2e.py), perf_analyzer with the key header
#   install        only put the project on the Pythons' path (then run a command of your own)
#   tests-kernels  pytest -m gpu: ops, stages, models, runtimes, pipeline, NVML
#   video-check    the video GPU tests and the server-side rows alone (after a fix there)
#   bench-video-direct  16 NVDEC streams, decode + blur, into the ensemble and the one-hop model
#   bench-video-mps  the same under the CUDA MPS daemon (one GPU shared by the client's decoder
#                  and the server's processes without context switches)
#   tests-serving  pytest -m gpu: functional (KIND_GPU ensemble, selfie and fcn_resnet101),
#                  reliability (GPU OOM, kill -9 recovery), video (NVDEC, DALI), client, serving
#   tests-streams  pytest -m gpu: the temporal kernels, the stream ensemble, the video model's
#                  stream path and the client's, then bench/effects.py on the GPU
#   tests-video    pytest -m gpu: tests/video (NVDEC, DALI, the video model on a GPU server) and
#                  the profiler test (a shorter tests-serving, after a fix there)
#   bench-e2e      fcn_resnet101 and selfie at 1080p through CUDA shm with the reference CPU pipeline
#                  in the same run (ratios), the one-hop direct model, HTTP and raw gRPC rows,
#                  a profiled run of every stage
#                  (BGBLUR_PROFILE_DIR), ncu on the fused postprocess kernels
#   bench-e2e-defaults  the fcn_resnet101 row with the CPU baseline, the direct model and selfie
#                  at the defaults (a shorter bench-e2e, after a change of GPU defaults)
#   bench-e2e-direct-fcn  fcn_resnet101 through background_blur_direct
#   bench-video    decode + blur with frames back in client memory (16 streams, NVDEC/DALI;
#                  NVDEC alone beside it), server side with BLS vs in-process blur, file to
#                  file vs the CPU pipeline
#   bench-video-processes  the 16 NVDEC streams over 4 client processes
#   perf-levers    A/B of the server's performance levers on one machine, in one command:
#                  baseline, --segmentation-batch 64 (segmentation merges the requests of
#                  several clients), --mps (server and client under one CUDA MPS daemon) and
#                  both, for the fcn_resnet101 and selfie_general ensembles, then the selfie
#                  one-hop model at the defaults; each at 1080p over CUDA shm, the rows that
#                  decide (batch 8 x 16 clients, batch 1 x 1 client), 3 s each; one JSON per
#                  variant (levers-<gpu>-<day>-<model>-<variant>.json) and levers-summary.txt
#   soak-start     the 10-minute soak at concurrency 16 (bench/soak.py) in its own session,
#                  then tests-kernels beside it (correctness only, so the two can share the
#                  machine; the soak samples its server's own GPU memory, not the device's)
#   soak-collect   tests-serving beside the soak (less the real GPU OOM test, which fills the
#                  GPU), then waits for the soak, copies its JSON and runs the OOM test alone
set -uo pipefail
cd "$(dirname "$0")/.."
phase="${1:-}"
shift || true
OUT="${OUT:-$PWD/out/device}"
mkdir -p "$OUT"
export BGBLUR_CACHE="${BGBLUR_CACHE:-$PWD/.cache/bgblur}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
day="$(date -u +%F)"

run() {  # run LIMIT_S LOG CMD...: the command under a time limit, its output also in $OUT/LOG
  local limit="$1" log="$2"
  shift 2
  echo "== $(date -u +%T) $*" | tee -a "$OUT/$log"
  timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee -a "$OUT/$log"
  local rc="${PIPESTATUS[0]}"
  echo "== rc=$rc" | tee -a "$OUT/$log"
  return 0
}

dev_install() {  # the project on every Python's path there, stubs included (an editable install's .pth)
  local site
  if ls /tmp/gpu-bundle/deps/*.whl >/dev/null 2>&1 && [ ! -e /tmp/gpu-bundle/deps/.done ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-bundle/site \
      /tmp/gpu-bundle/deps/*.whl && touch /tmp/gpu-bundle/deps/.done
  fi
  site="$("$PY" -c 'import site; print(site.getsitepackages()[0])')"
  # The bundle's packages too (PyAV for the video model's stub), should a stub not take
  # $PYTHONPATH from the server's environment.
  printf '%s\n' "$PWD/backends" "$PWD/client" /tmp/gpu-bundle/site > "$site/bgblur-dev.pth" 2>/dev/null \
    || echo "WARNING: cannot write $site/bgblur-dev.pth: the Python stubs will not find bgblur"
}

pack_out() {  # the device tool brings back at most 8 files: more than that travel as one tarball
  [ "$(find "$OUT" -type f | wc -l)" -le 8 ] && return 0
  tar -czf "/tmp/$phase-out.tar.gz" -C "$OUT" . && find "$OUT" -mindepth 1 -delete \
    && mv "/tmp/$phase-out.tar.gz" "$OUT/"
}

e2e_headline_rows() {  # fcn_resnet101 with the reference CPU pipeline in the same run; the one-hop model
  run 200 bench-e2e.log "$PY" bench/e2e.py --device gpu --model fcn_resnet101 --sizes 1080p \
    --batches 1,8 --concurrency 1,16 --seconds 3 --shared-memory cuda \
    --cpu-baseline 1,16 --cpu-baseline-frames 60 --out "$OUT/e2e-$gpu-$day-fcn.json"
  run 90 bench-e2e.log "$PY" bench/e2e.py --device gpu --served-model background_blur_direct \
    --sizes 1080p --batches 1,8 --concurrency 1,8 --seconds 3 --shared-memory cuda \
    --out "$OUT/e2e-$gpu-$day-selfie-direct.json"
}

gpu_label() {
  "$PY" -c 'import cupy; print(cupy.cuda.runtime.getDeviceProperties(0)["name"].decode().lower().replace("nvidia ", "").split()[0])' 2>/dev/null || echo gpu
}

[ "$phase" = bundle ] || dev_install
case "$phase" in
  bundle)
    big=(--big av==18.1.0 --big opencv-contrib-python-headless==5.0.0.93)
    [ "${1:-}" = "--dali" ] && big+=(--big nvidia-dali-cuda130==2.4.0)
    bash ../shared/gpu/bundle.sh --video --http "${big[@]}" || exit 1
    if [ "${1:-}" = "--dali" ]; then  # DALI's own needs that the GPU machine lacks, in the last part
      last="$(ls -d .gpu-part-* | sort -V | tail -1)"
      mkdir -p "$last/deps"
      "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$last/deps" \
        optree==0.20.0 astunparse==1.6.3 gast==0.6.0 makefun==1.16.0 libcst==1.8.6 || exit 1
      echo 'mkdir -p /tmp/gpu-bundle/deps && cp "$(dirname "$0")"/deps/*.whl /tmp/gpu-bundle/deps/' \
        >> "$last/stash.sh"
    fi
    [ -d .cache/bgblur ] || make setup >/dev/null || exit 1
    tree_b=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
    limit_b=$((64 * 1024 * 1024))
    phase_b=$((tree_b + $(du -sb .gpu-bundle .cache | awk '{s += $1} END {print s}')))
    echo "a phase call carries $((phase_b / 1048576)) MiB (limit 64)"
    [ "$phase_b" -lt "$limit_b" ] || { echo "too large for one call" >&2; exit 1; }
    for part in .gpu-part-*; do
      [ -d "$part" ] || continue
      part_b=$((tree_b + $(du -sb "$part" | cut -f1)))
      echo "$part carries $((part_b / 1048576)) MiB"
      [ "$part_b" -lt "$limit_b" ] || { echo "$part too large for one call" >&2; exit 1; }
    done
    ;;
  bundle-serving)
    bash ../shared/gpu/bundle.sh --http --perf \
      --wheel aiohttp==3.14.5 --wheel multidict==7.2.1 --wheel yarl==1.25.1 \
      --wheel propcache==0.5.4 --wheel frozenlist==1.8.0 --wheel aiosignal==1.4.0 \
      --wheel aiohappyeyeballs==2.7.1 --wheel attrs==26.1.0 --wheel idna==3.21 \
      --wheel typing_extensions==4.16.0 --wheel nvidia-ml-py==13.615.71 || exit 1
    ;;
  install)  # only the project on the Pythons' path (every phase does it first): for own commands
    ;;
  hardening-tests)
    nvidia-smi -L | tee "$OUT/device.txt"
    # Without the PyAV part: the modules that import av at collection are left out.
    run 560 hardening-tests.log "$PY" -m pytest -q -m gpu -p no:cacheprovider \
      tests/functional tests/reliability tests/client tests/server tests/stages/test_nvtx.py \
      --ignore tests/functional/test_cli.py --ignore tests/client/test_client_cli.py \
      --ignore tests/client/test_client_samples.py --ignore tests/client/test_client_install.py \
      --ignore tests/client/test_client_outputs.py
    ;;
  hardening-quick)  # both in one command: the GPU serving tests, then the gRPC guard's cost
    nvidia-smi -L | tee "$OUT/device.txt"
    gpu="$(gpu_label)"
    run 300 hardening-quick.log "$PY" -m pytest -q -m gpu -p no:cacheprovider -x \
      tests/functional/test_server.py tests/reliability tests/stages/test_nvtx.py
    run 170 hardening-quick.log "$PY" bench/guard.py --device gpu --sizes 1080p \
      --transports grpc:none,grpc:cuda,http:none --concurrency 8 --seconds 3 --rounds 1 \
      --out "$OUT/guard-$gpu-$day-grpc.json"
    ;;
  hardening-bench)
    gpu="$(gpu_label)"
    run 300 hardening-bench.log "$PY" bench/guard.py --device gpu --sizes 1080p \
      --transports http:none,grpc:none,grpc:cuda --concurrency 1,8 --seconds 4 \
      --out "$OUT/guard-$gpu-$day.json"
    run 120 hardening-bench.log "$PY" bench/e2e.py --device gpu --sizes 1080p --batches 1,8 \
      --concurrency 1,16 --seconds 3 --shared-memory cuda --out "$OUT/e2e-$gpu-$day-selfie-key.json"
    run 150 hardening-bench.log "$PY" bench/perf.py --size 1080p --batch 8 --concurrency 8:8:1 \
      --shared-memory cuda --measurement-ms 3000 --out-dir "$OUT/perf"
    ;;
  tests-kernels)
    nvidia-smi -L | tee "$OUT/device.txt"
    run 560 tests-kernels.log "$PY" -m pytest -q -m gpu -p no:cacheprovider \
      tests/ops tests/stages tests/models tests/runtimes tests/test_pipeline.py tests/test_nvml.py \
      --junitxml="$OUT/junit-kernels.xml"
    ;;
  tests-video)  # the video, DALI and profiler tests alone (after a fix there)
    "$PY" -c 'import av; print("PyAV", av.__version__)' 2>&1 | tee "$OUT/tests-video.log"
    run 400 tests-video.log "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/video \
      tests/functional/test_profiling.py --junitxml="$OUT/junit-video.xml"
    ;;
  video-check)  # after a fix in the video paths: their GPU tests, then the server-side rows
    gpu="$(gpu_label)"
    # Evidence for the cause: PyNvVideoCodec's encoder without a context of ours, on a thread
    # whose runtime is bound to the primary context: the thread's context before and after.
    run 60 tests-video.log "$PY" - <<'PYEOF'
import ctypes, cupy, PyNvVideoCodec as nvc
lib = ctypes.CDLL("libcuda.so.1")
def current():
    c = ctypes.c_void_p(); lib.cuCtxGetCurrent(ctypes.byref(c)); return c.value
cupy.cuda.runtime.free(0)
before = current()
try:
    nvc.CreateEncoder(1920, 1080, "ABGR", True, codec="h264", gpu_id="0")
    opened = "opened"
except Exception as exc:
    opened = f"failed: {str(exc).splitlines()[0]}"
print(f"NVENC {opened}; thread context before {before:#x}, after {current() or 0:#x}")
PYEOF
    run 280 tests-video.log "$PY" -m pytest -q -m gpu -p no:cacheprovider \
      tests/video/test_cuda_context.py tests/video/test_served_video.py \
      tests/video/test_gpu_decoders.py tests/video/test_encoders.py \
      tests/functional/test_profiling.py --junitxml="$OUT/junit-video.xml"
    run 150 bench-video.log "$PY" bench/video.py --size 1080p --frames 120 --streams 1,4 \
      --model fcn_resnet101 --paths server-inprocess,server --server-log-dir "$OUT/logs" \
      --out "$OUT/video-$gpu-$day-server.json"
    ;;
  tests-streams)  # the stream paths' GPU tests (temporal kernels, stream ensemble, video model,
    # client video), then each effect's GPU cost (bench/effects.py); PyAV part stashed first
    gpu="$(gpu_label)"
    nvidia-smi -L | tee "$OUT/device.txt"
    run 400 tests-streams.log "$PY" -m pytest -q -m gpu -p no:cacheprovider \
      tests/ops/test_temporal_gpu.py tests/ops/test_composite_gpu.py tests/stages/test_temporal.py \
      tests/functional/test_stream.py tests/video/test_served_video_stream.py \
      tests/video/test_served_video.py tests/client/test_video_stream.py \
      --junitxml="$OUT/junit-streams.xml"
    run 120 tests-streams.log "$PY" bench/effects.py --device gpu --sizes 720p,1080p --batches 1,8 \
      --out "$OUT/effects-$gpu-$day.json"
    ;;
  tests-serving)
    run 560 tests-serving.log "$PY" -m pytest -q -m gpu -p no:cacheprovider \
      tests/functional tests/reliability tests/video tests/client tests/serving tests/bench \
      --junitxml="$OUT/junit-serving.xml"
    ;;
  bench-e2e)  # most wanted first: a call cut at its limit keeps what ran
    gpu="$(gpu_label)"
    "$PY" -c 'import cv2; cv2.ximgproc' 2>/dev/null \
      || echo "WARNING: no cv2.ximgproc: the CPU baseline runs the slow NumPy joint bilateral" \
      | tee -a "$OUT/bench-e2e.log"
    e2e_headline_rows
    run 90 bench-e2e.log "$PY" bench/e2e.py --device gpu --sizes 1080p --batches 1,8 \
      --concurrency 1,8 --seconds 3 --shared-memory cuda --profile-dir "$OUT/profile" \
      --out "$OUT/e2e-$gpu-$day-selfie-profiled.json"
    tar -czf "$OUT/profile.tar.gz" -C "$OUT" profile && rm -rf "$OUT/profile"
    run 100 bench-e2e.log "$PY" bench/ops.py --sizes 1080p,4k --batches 1,32 --no-cpu \
      --budget-s 80 --out "$OUT/ops-$gpu-$day.json"
    ncu="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)"
    run 120 ncu-postprocess.txt "${ncu:-ncu}" --target-processes all -k regex:fused --launch-count 4 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
      "$PY" bench/ops.py --sizes 1080p --batches 8 --reps 1 --warmup 0 --no-cpu --budget-s 30 \
      --out /tmp/ops-ncu.json
    run 90 bench-e2e.log "$PY" bench/e2e.py --device gpu --sizes 1080p --batches 1,8 \
      --concurrency 1,8 --seconds 3 --shared-memory none,cuda --out "$OUT/e2e-$gpu-$day-selfie.json"
    run 90 bench-e2e.log "$PY" bench/e2e.py --device gpu --protocol http --sizes 1080p \
      --batches 1,8 --concurrency 1,8 --seconds 3 --shared-memory none \
      --out "$OUT/e2e-$gpu-$day-selfie-http.json"
    run 90 bench-e2e.log "$PY" bench/e2e.py --device gpu --model-param resize_interpolation=area \
      --sizes 1080p,4k --batches 1,8 --concurrency 1,8 --seconds 3 --shared-memory cuda \
      --out "$OUT/e2e-$gpu-$day-selfie-area.json"
    run 90 bench-e2e.log "$PY" bench/e2e.py --device gpu --instances postprocess=2 \
      --sizes 1080p --batches 8 --concurrency 8,16 --seconds 3 --shared-memory cuda \
      --out "$OUT/e2e-$gpu-$day-selfie-post2.json"
    ;;
  bench-e2e-defaults)  # after a change of GPU defaults: the headline rows only (no ops, ncu, HTTP)
    gpu="$(gpu_label)"
    e2e_headline_rows
    run 90 bench-e2e.log "$PY" bench/e2e.py --device gpu --sizes 1080p --batches 1,8 \
      --concurrency 1,8,16 --seconds 3 --shared-memory cuda --out "$OUT/e2e-$gpu-$day-selfie.json"
    ;;
  bench-e2e-direct-fcn)  # the reference sample's network through the one-hop model
    gpu="$(gpu_label)"
    run 120 bench-e2e.log "$PY" bench/e2e.py --device gpu --model fcn_resnet101 \
      --served-model background_blur_direct --sizes 1080p --batches 1,8 --concurrency 1,8,16 \
      --seconds 3 --shared-memory cuda --out "$OUT/e2e-$gpu-$day-fcn-direct.json"
    ;;
  bench-video)
    gpu="$(gpu_label)"
    paths=decode-nvdec,nvdec-only,decode-pyav
    "$PY" -c 'import nvidia.dali' 2>/dev/null && paths="$paths,client-dali"
    run 220 bench-video.log "$PY" bench/video.py --size 1080p --frames 120 --streams 1,16 \
      --model fcn_resnet101 --shared-memory cuda --paths "$paths" --out "$OUT/video-$gpu-$day.json"
    run 280 bench-video.log "$PY" bench/video.py --size 1080p --frames 120 --streams 1,4 \
      --model fcn_resnet101 --shared-memory cuda --paths server,server-inprocess,server-chunked,cpu-baseline \
      --merge --out "$OUT/video-$gpu-$day.json"
    ;;
  bench-video-direct)  # 16 NVDEC streams into the ensemble and into the one-hop model, same run
    gpu="$(gpu_label)"
    for model in background_blur background_blur_direct; do
      run 150 bench-video.log "$PY" bench/video.py --size 1080p --frames 120 --streams 16 \
        --model fcn_resnet101 --shared-memory cuda --paths decode-nvdec --client-model "$model" \
        --merge --out "$OUT/video-$gpu-$day-direct.json"
    done
    ;;
  bench-video-mps)  # the same 16 NVDEC streams with the CUDA MPS daemon: client and server
    # processes share the GPU's SMs at once instead of time-slicing between their contexts
    gpu="$(gpu_label)"
    if ! command -v nvidia-cuda-mps-control >/dev/null; then
      echo "no nvidia-cuda-mps-control here" | tee -a "$OUT/bench-video.log"
    else
      export CUDA_MPS_PIPE_DIRECTORY=/tmp/bgblur-mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/bgblur-mps/log
      mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
      nvidia-cuda-mps-control -d && echo "MPS daemon started" | tee -a "$OUT/bench-video.log"
      run 60 bench-video.log "$PY" bench/video.py --size 1080p --frames 120 --streams 16 \
        --paths nvdec-only --merge --out "$OUT/video-$gpu-$day-mps.json"
      for processes in 1 4; do  # 4 client processes: no GIL shared by the 16 streams
        for model in background_blur background_blur_direct; do
          run 120 bench-video.log "$PY" bench/video.py --size 1080p --frames 120 --streams 16 \
            --model fcn_resnet101 --shared-memory cuda --paths decode-nvdec \
            --client-processes "$processes" --client-model "$model" --merge \
            --out "$OUT/video-$gpu-$day-mps.json"
        done
      done
      echo quit | nvidia-cuda-mps-control
      cp "$CUDA_MPS_LOG_DIRECTORY"/*.log "$OUT/" 2>/dev/null
    fi
    ;;
  bench-video-processes)  # the NVDEC streams spread over client processes
    gpu="$(gpu_label)"
    run 80 bench-video.log "$PY" bench/video.py --size 1080p --frames 120 --streams 16 \
      --model fcn_resnet101 --shared-memory cuda --paths decode-nvdec --client-processes 4 \
      --out "$OUT/video-$gpu-$day-processes.json"
    ;;
  perf-levers)  # 9 server starts; the limits add up to 535 s, the most wanted first
    gpu="$(gpu_label)"
    nvidia-smi -L | tee "$OUT/device.txt"
    command -v nvidia-cuda-mps-control >/dev/null \
      || echo "WARNING: no nvidia-cuda-mps-control here: the --mps variants fail" \
      | tee -a "$OUT/perf-levers.log"
    # $VARIANTS: a subset of the four (default all); each variant's JSON goes into
    # $OUT/levers.tar.gz as soon as it is written, so a command cut at its limit keeps them
    mkdir -p /tmp/levers
    for model in fcn_resnet101 selfie_general; do
      limit=55
      [ "$model" = fcn_resnet101 ] && limit=65  # a larger network to load, 7 graphs to capture
      for variant in ${VARIANTS:-baseline seg64 mps seg64-mps}; do
        levers=()
        case "$variant" in *seg64*) levers+=(--segmentation-batch 64);; esac
        case "$variant" in *mps*) levers+=(--mps);; esac
        run "$limit" perf-levers.log "$PY" bench/e2e.py --device gpu --model "$model" \
          --sizes 1080p --pairs 8x16,1x1 --seconds 3 --shared-memory cuda "${levers[@]}" \
          --out "/tmp/levers/levers-$gpu-$day-$model-$variant.json"
        tar -czf "$OUT/levers.tar.gz" -C /tmp/levers .
      done
    done
    run 55 perf-levers.log "$PY" bench/e2e.py --device gpu --served-model background_blur_direct \
      --sizes 1080p --pairs 8x16,1x1 --seconds 3 --shared-memory cuda \
      --out "/tmp/levers/levers-$gpu-$day-selfie_general-direct.json"
    tar -czf "$OUT/levers.tar.gz" -C /tmp/levers .
    "$PY" - /tmp/levers <<'PYEOF' 2>&1 | tee "$OUT/levers-summary.txt"
import json, pathlib, sys
print(f"{'file':<58} {'8x16 frames/s':>13} {'seg frames/exec':>15} {'1x1 p50 ms':>10}")
for path in sorted(pathlib.Path(sys.argv[1]).glob("levers-*.json")):
    rows = {(r["batch"], r["concurrency"]): r for r in json.loads(path.read_text())["served"]}
    wide, one = rows.get((8, 16), {}), rows.get((1, 1), {})
    seg = wide.get("stages", {}).get("segmentation", {}).get("frames_per_execution", float("nan"))
    print(f"{path.stem:<58} {wide.get('frames_per_s', float('nan')):>13.0f} {seg:>15.1f} "
          f"{one.get('latency_ms_p50', float('nan')):>10.2f}")
PYEOF
    ;;
  soak-start)
    gpu="$(gpu_label)"
    nvidia-smi -L | tee "$OUT/device.txt"
    rm -f /tmp/soak.json /tmp/soak.done
    setsid bash -c "$PY bench/soak.py --minutes 10 --concurrency 16 --device gpu \
      --shared-memory cuda --out /tmp/soak.json > /tmp/soak.log 2>&1; touch /tmp/soak.done" \
      < /dev/null > /dev/null 2>&1 &  # holds none of our output open: a caller's pipe would wait 10 min
    sleep 60  # the soak's server up and warm before the tests add their load
    run 480 tests-kernels.log "$PY" -m pytest -q -m gpu -p no:cacheprovider \
      tests/ops tests/stages tests/models tests/runtimes tests/test_pipeline.py tests/test_nvml.py \
      --junitxml="$OUT/junit-kernels.xml"
    cp /tmp/soak.log "$OUT/soak-$gpu-$day.log"
    ;;
  soak-collect)
    gpu="$(gpu_label)"
    run 420 tests-serving.log "$PY" -m pytest -q -m gpu -p no:cacheprovider \
      tests/functional tests/reliability tests/video tests/client tests/serving tests/bench \
      -k "not real_gpu_oom" --junitxml="$OUT/junit-serving.xml"
    for _ in $(seq 300); do [ -e /tmp/soak.done ] && break; sleep 1; done
    cp /tmp/soak.log "$OUT/soak-$gpu-$day.log"
    cp /tmp/soak.json "$OUT/soak-$gpu-$day.json" || echo "no soak JSON (see the log)"
    run 120 tests-serving.log "$PY" -m pytest -q -m gpu -p no:cacheprovider \
      tests/reliability/test_gpu_oom.py --junitxml="$OUT/junit-oom.xml"
    ;;
  *)
    awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"
    exit 2
    ;;
esac
[ "$phase" = bundle ] || pack_out
