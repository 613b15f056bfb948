"""Every CUDA source in ``bgblur/kernels`` compiles with NVRTC, on the CPU machine.

CI has no GPU, so the GPU tests skip there; NVRTC itself (the ``nvidia-cuda-nvrtc`` wheel, the
same compiler CuPy calls at run time) needs none. Each ``.cu`` is compiled as
``bgblur.kernels.get_module`` builds it (its includes inlined, ``NVRTC_OPTIONS``) for Hopper
(H100/H200: compute_90) and Turing (T4: compute_75), and every
``extern "C" __global__`` kernel must be in the PTX, as must every name the launchers ask for.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from bgblur.kernels import KERNEL_DIR, NVRTC_OPTIONS, read_source

SOURCES = sorted(p.stem for p in KERNEL_DIR.glob("*.cu"))
ARCHES = ["compute_75", "compute_90"]


@pytest.fixture(scope="module")
def nvrtc() -> ctypes.CDLL:
    spec = importlib.util.find_spec("nvidia")  # the namespace the NVIDIA wheels share
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    libs = [lib for folder in folders for lib in Path(folder).glob("cu*/lib/libnvrtc.so.*")]
    if not libs:
        pytest.skip("the nvidia-cuda-nvrtc wheel is not installed")
    for builtins in sorted(libs[0].parent.glob("libnvrtc-builtins.so.*")):
        ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)  # found without LD_LIBRARY_PATH
    return ctypes.CDLL(str(libs[0]))


def compile_to_ptx(nvrtc: ctypes.CDLL, name: str, arch: str) -> str:
    """PTX of ``<name>.cu`` for ``arch``; fails the test with NVRTC's log on an error."""
    program = ctypes.c_void_p()
    source = read_source(name).encode()
    assert (
        nvrtc.nvrtcCreateProgram(
            ctypes.byref(program), source, f"{name}.cu".encode(), 0, None, None
        )
        == 0
    )
    options = [o.encode() for o in (*NVRTC_OPTIONS, f"--gpu-architecture={arch}")]
    try:
        result = nvrtc.nvrtcCompileProgram(
            program, len(options), (ctypes.c_char_p * len(options))(*options)
        )
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(program, log)
        assert result == 0, f"{name}.cu for {arch}:\n{log.value.decode(errors='replace')}"
        nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        assert nvrtc.nvrtcGetPTX(program, ptx) == 0
        return ptx.value.decode()
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


def declared_kernels(name: str) -> set[str]:
    """Kernels ``<name>.cu`` declares: ``extern "C" __global__ void [__launch_bounds__(..)] K``,
    and the instances of a macro that declares them (``FUSED_KERNEL(k, ...)``: ``k``)."""
    source = read_source(name)
    declared = r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)'
    names = set(re.findall(declared, source))
    for macro in re.findall(r"^#define\s+(\w+)\(NAME\b", source, re.MULTILINE):
        names |= set(re.findall(rf"^{macro}\(\s*(\w+)", source, re.MULTILINE))
    return {n for n in names if n != "NAME"}


def launched_kernels() -> set[tuple[str, str]]:
    """``(module, kernel)`` pairs the Python launchers (``bgblur.ops.*_gpu`` and
    ``bgblur.stages.postprocess_fused``) name literally, plus the families that
    ``postprocess_fused`` and ``resize_gpu`` name by parts."""
    pairs: set[tuple[str, str]] = set()
    package = KERNEL_DIR.parent
    launchers = [*(package / "ops").glob("*_gpu.py"), package / "stages" / "postprocess_fused.py"]
    for path in launchers:
        text = path.read_text()
        pairs |= set(re.findall(r'get_kernel\(\s*"(\w+)",\s*"(\w+)"', text))
        for module, first, second in re.findall(
            r'get_kernel\(\s*"(\w+)",\s*"(\w+)" if \w+ else "(\w+)"', text
        ):
            pairs |= {(module, first), (module, second)}
    # FusedPostprocess: fused_post_<probability dtype>_<mask upscale>_<refine|plain>.
    for dtype in ("f16", "f32"):
        for upscale in ("nearest", "linear"):
            for refine in ("refine", "plain"):
                pairs.add(("fused", f"fused_post_{dtype}_{upscale}_{refine}"))
    from bgblur.ops import resize_gpu

    for interpolation in ("linear", "area"):
        for dtype in ("float16", "float32"):
            for table in (False, True):
                pairs.add(
                    (
                        "resize",
                        resize_gpu._normalize_kernel(interpolation, np.dtype(dtype), table=table),
                    )
                )
    return pairs


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name", SOURCES)
def test_compiles_and_exports_its_kernels(nvrtc: ctypes.CDLL, name: str, arch: str) -> None:
    ptx = compile_to_ptx(nvrtc, name, arch)
    entries = set(re.findall(r"\.entry\s+(\w+)\(", ptx))
    kernels = declared_kernels(name)
    assert kernels, f"{name}.cu declares no kernel"
    assert kernels <= entries, sorted(kernels - entries)


def test_every_kernel_the_launchers_ask_for_is_declared() -> None:
    missing = sorted((m, k) for m, k in launched_kernels() if k not in declared_kernels(m))
    assert not missing, missing
    assert len({m for m, _ in launched_kernels()}) >= 6
