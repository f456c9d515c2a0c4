"""The engine's light modules (used by the 3D Slicer module and the standard-library
client) must not pull in torch or transformers at import time."""

from __future__ import annotations

import subprocess
import sys


def test_light_modules_do_not_import_torch():
    code = ("import sys\n"
            "import medsegr, medsegr.errors, medsegr.config, medsegr.samples, medsegr.prompts\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'timm') if m in sys.modules)\n"
            "print(','.join(heavy))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
