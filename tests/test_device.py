"""Process settings for running models: the allocator keeps freed tensor memory for reuse."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from drnets.device import cudnn_enabled, cudnn_suits_training
from drnets.inference import has_glibc, keep_freed_memory


def test_keep_freed_memory_applies_exactly_where_glibc_is() -> None:
    assert keep_freed_memory() is has_glibc()


# Run in a fresh interpreter: page faults are counted for the whole process, and a test suite's
# earlier tests (their threads, their heap) would be counted with the forwards being measured.
PAGE_FAULTS = """
import resource, torch
from drnets.inference import for_inference, keep_freed_memory
from drnets.model import create_model
assert keep_freed_memory()
torch.manual_seed(0)
model = for_inference(create_model("drnet", channels=12, num_nodes=2))
x = torch.randn(64, 1, 28, 28)
with torch.no_grad():
    for _ in range(4):  # glibc settles on the heap's layout within a few calls
        model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        model(x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_a_batched_forward_stops_page_faulting_once_warm() -> None:
    """Why it matters: with glibc's defaults a batch-64 DRNet forward page-faults ~5,000 times, every time."""
    if not has_glibc():
        pytest.skip("the allocator setting is glibc-only")
    done = subprocess.run([sys.executable, "-c", PAGE_FAULTS], capture_output=True, text=True, timeout=300, check=True)
    faults = int(done.stdout.split()[-1])
    assert faults < 1500, f"{faults} page faults in three warm forwards (about 15,000 without the setting)"


@pytest.mark.parametrize(("name", "on_gpu"), [("drnet", False), ("dense", True), ("mobilenetv2", True)])
def test_cudnn_trains_every_model_but_a_routed_drnet_on_a_gpu(tiny_model, name: str, on_gpu: bool) -> None:
    """Only routing makes new sub-batch shapes each step; the CPU never uses cuDNN, so it is left on."""
    model = tiny_model(name)
    assert cudnn_suits_training(model, torch.device("cpu"))
    assert cudnn_suits_training(model, torch.device("cuda")) is on_gpu
    assert cudnn_suits_training(model, torch.device("cuda"), execution="masked"), "masked training keeps shapes fixed"


def test_cudnn_switch_holds_for_the_block_only() -> None:
    before = torch.backends.cudnn.enabled
    with pytest.raises(RuntimeError), cudnn_enabled(not before):
        assert torch.backends.cudnn.enabled is not before
        raise RuntimeError("the flag comes back on errors too")
    assert torch.backends.cudnn.enabled is before
