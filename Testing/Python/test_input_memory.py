"""``python -m medsegr.bench.input_memory``: reading each memory case (a 16000×16000 PNG,
a 512×512×1024 gzip NRRD of zeros, a gzip NRRD of 200,000 empty members, a short
``.nii.gz``) in a fresh process, read as ``medsegr ask`` reads it, stays under its
peak-RSS bound: twice the float32 size of the decoded volume (the 8-bit image is kept in
its type and peaks near 5 bytes a voxel of the 8), 64 MiB for a refused input. About
15 s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = {"png_16000x16000": "decoded", "nrrd_gzip_zeros_512x512x1024": "decoded",
         "nrrd_gzip_empty_members": "refused", "niigz_short_data": "refused"}


def test_the_memory_cases_stay_within_their_peak_rss_bounds(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, "-m", "medsegr.bench.input_memory", "--json", str(out)],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert {row["case"]: row["expected"] for row in rows} == CASES, done.stdout
    for row in rows:
        assert row["as_expected"], row
        assert row["peak_growth_bytes"] <= row["bound_bytes"], (row, done.stdout)
        if row["expected"] == "decoded":
            assert row["voxels"] > 0 and row["float32_bytes"] == 4 * row["voxels"]
            assert row["stored_dtype"] == "uint8"
            assert row["bound_bytes"] == 2 * row["float32_bytes"]
        else:
            assert row["refused"] and row["bound_bytes"] == 64 * 1024 * 1024
    assert done.returncode == 0, done.stdout + done.stderr
