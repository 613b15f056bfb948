"""Fixtures of the stage tests: the op tests' test images and GPU-vs-CPU comparisons
(``tests/ops/conftest.py``), for the fused postprocess held to the per-op chain and the CPU."""

from tests.ops.conftest import assert_u8_close, make_frames, padded_out

__all__ = ["assert_u8_close", "make_frames", "padded_out"]
