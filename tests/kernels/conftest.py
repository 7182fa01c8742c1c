"""Kernel tests run on CUDA when there is one, else on Triton's CPU interpreter
(``TRITON_INTERPRET=1``, set in the root ``tests/conftest.py`` before any kernel is decorated)."""

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
