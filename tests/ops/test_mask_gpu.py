"""probability_to_mask on CuPy arrays (plain xp code, no kernel of its own) against NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from bgblur import ops

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("soft", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 1, 7, 13), (3, 1, 256, 256)])
def test_probability_to_mask_gpu_matches_cpu(cupy, assert_u8_close, shape, soft, dtype):
    rng = np.random.default_rng(3)
    prob = rng.uniform(-0.2, 1.2, shape).astype(dtype)
    expected = ops.probability_to_mask(prob, soft=soft)
    actual = ops.probability_to_mask(cupy.asarray(prob), soft=soft)
    assert isinstance(actual, cupy.ndarray)
    assert_u8_close(cupy.asnumpy(actual), expected, case=f"{shape} soft={soft}", max_diff=0)


def test_probability_to_mask_gpu_on_stream(cupy):
    prob = cupy.asarray(np.random.default_rng(4).uniform(0, 1, (3, 1, 256, 256)), np.float16)
    expected = cupy.asnumpy(ops.probability_to_mask(prob))
    with cupy.cuda.Stream(non_blocking=True) as stream:
        actual = ops.probability_to_mask(prob)
        stream.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(actual), expected)
