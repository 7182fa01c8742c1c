"""Setting TRITON_INTERPRET after triton is imported gives one clear error, not an interpreter traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

SCRIPT = """
import os, torch, triton
os.environ["TRITON_INTERPRET"] = "1"
from causal_rcm.kernels import op
q = torch.randn(1, 2, 16, 16)
op.attention(q, q, q, None)
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU interpreter's import order")
def test_interpret_set_after_triton_import_is_named():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "TRITON_INTERPRET=1 was set after triton" in result.stderr.splitlines()[-1]
