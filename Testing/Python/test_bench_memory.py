"""Per-block peak memory: the high-water mark is reset for each measured block."""

from __future__ import annotations

import numpy as np
import pytest

from medsegr.bench.memory import PeakMemory

MIB = 1024 * 1024


def test_peak_of_each_block_is_its_own():
    with PeakMemory() as big:
        block = np.ones(300 * MIB, dtype=np.uint8)  # touched: 300 MiB resident
        assert int(block[::4096].sum()) == 300 * MIB // 4096
        del block
    assert big.reading is not None
    if big.reading.scope != "block":
        pytest.skip("this system cannot reset the resident-set high-water mark")
    start = big.reading.start_rss_mib
    assert start is not None
    assert big.reading.peak_rss_mib >= start + 280

    with PeakMemory() as small:  # a later, smaller block must not inherit that peak
        small_block = np.ones(20 * MIB, dtype=np.uint8)
        assert int(small_block.sum()) == 20 * MIB
        del small_block
    assert small.reading is not None and small.reading.scope == "block"
    assert small.reading.peak_rss_mib < big.reading.peak_rss_mib - 200
    assert small.reading.peak_rss_mib >= (small.reading.start_rss_mib or 0) + 15
    assert small.reading.cuda_peak_mib is None
