"""Kernel tests run on CUDA when there is one, else on Triton's CPU interpreter.

TRITON_INTERPRET must be set before ``triton.jit`` decorates the kernels, that is before
``causal_rcm.kernels.flash`` is first imported.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
