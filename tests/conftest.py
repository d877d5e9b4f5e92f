"""Test-wide settings.

``QSHAMPOO_TEST_DEVICE=cuda pytest`` runs the suite with that default device: every tensor a
test makes without naming a device, parameters, gradients and so the optimizer state, lives on
it (``torch.set_default_device``). Tests that need a CPU say so; ``tests/test_devices.py``
checks what a default device cannot: parameters on the GPU while the default stays the CPU.
"""

import os

import pytest
import torch

DEVICE = os.environ.get("QSHAMPOO_TEST_DEVICE")

# Without CUDA the Triton kernels (tests/test_kernels.py) run in Triton's interpreter, which
# must be chosen before triton is first imported (torch._dynamo imports it, so test modules
# that compile would otherwise import it first). Nothing else runs triton on a CPU.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_configure(config):
    if DEVICE:
        torch.set_default_device(DEVICE)


def pytest_report_header(config):
    return f"qshampoo test device: {torch.get_default_device()}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
