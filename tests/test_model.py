"""Every registered model: shapes, finiteness, gradients, and clear errors on bad use."""

from __future__ import annotations

import json

import pytest
import torch

from drnets.model import create_model, list_models, model_config

SHAPES = [(1, 28, 28), (3, 32, 32)]


def test_registry_lists_the_three_models() -> None:
    assert list_models() == ["dense", "drnet", "mobilenetv2"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list_models())
def test_forward_shapes_and_trace(tiny_model, mixed_batch, name: str, shape: tuple[int, int, int]) -> None:
    model = tiny_model(name, in_channels=shape[0], num_classes=7)
    with torch.no_grad():
        logits, trace = model(mixed_batch(shape, n=3))
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()
    assert torch.equal(trace.logits, logits)
    assert trace.flops.shape == trace.params.shape == (3,)
    if name == "mobilenetv2":
        assert trace.gates.shape == trace.ran.shape == (3, 0, 0, 0)
        assert torch.all(trace.flops == trace.dense_flops)
    else:
        cells, edges, branches = model.config.num_cells, len(model.cells[0].edges), len(model.config.branches)
        assert trace.gates.shape == trace.ran.shape == (3, cells, edges, branches)
        assert trace.cell_flops.shape == (3, cells) and trace.ran.dtype == torch.bool
        assert torch.all(trace.flops <= trace.dense_flops)


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_gets_a_gradient_in_training(tiny_model, mixed_batch, name: str) -> None:
    # threshold 0 runs every branch, so every branch's weights must be reached by the loss.
    config = {"threshold": 0.0} if name == "drnet" else {}
    model = tiny_model(name, **config).train()
    logits, trace = model(mixed_batch(n=2))
    assert bool(trace.ran.all()) or name == "mobilenetv2"
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no (finite) gradient for {missing[:5]}"
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero, f"all-zero gradient for {zero[:5]}"


def test_dense_supernet_runs_every_branch_with_input_independent_gates(tiny_model, mixed_batch) -> None:
    model = tiny_model("dense")
    with torch.no_grad():
        _, trace = model(mixed_batch())
    assert trace.ran.all()
    assert torch.all(trace.gates == trace.gates[:1]) and torch.all(trace.flops == trace.dense_flops)


def test_eval_forward_is_deterministic(tiny_model, mixed_batch) -> None:
    model = tiny_model()
    x = mixed_batch()
    with torch.no_grad():
        (a, trace_a), (b, trace_b) = model(x), model(x)
    assert torch.equal(a, b) and torch.equal(trace_a.ran, trace_b.ran)


def test_config_is_plain_data_that_rebuilds_the_model(tiny_model) -> None:
    for name in list_models():
        model = tiny_model(name)
        config = json.loads(json.dumps(model_config(model)))
        rebuilt = create_model(name, **config)
        assert rebuilt.config == model.config
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
            k: v.shape for k, v in model.state_dict().items()
        }


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 28, 28), r"expected a batch of images \[B, C, H, W\]"),
        ((2, 3, 28, 28), r"takes 1-channel images, got 3 channels"),
        ((2, 1, 4, 28), r"at least 8x8 pixels"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(tiny_model, name: str, shape, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_model(name)(torch.randn(shape))


def test_unknown_branch_in_config_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown branch name\(s\) \['conv_7x7'\]"):
        create_model("drnet", branches=("sep_conv_3x3", "conv_7x7"))


@pytest.mark.parametrize(
    "name, config, message",
    [
        ("resnet50", {}, r"unknown model 'resnet50'; known models: dense, drnet, mobilenetv2"),
        ("drnet", {"chanels": 8}, r"invalid config for model 'drnet'.*chanels"),
        ("mobilenetv2", {"depth": 3}, r"invalid config for model 'mobilenetv2'.*depth"),
        ("drnet", {"threshold": 1.5}, r"threshold must lie in \[0, 1\]"),
        ("drnet", {"branches": ()}, r"at least one branch"),
        ("drnet", {"num_cells": 0}, r"num_cells"),
        ("drnet", {"router_grid": 0}, r"router_grid must be >= 1"),
        ("drnet", {"router_input": "image"}, r"router_input must be 'cell' or 'stem'"),
    ],
)
def test_bad_config_is_refused(name: str, config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model(name, **config)


def test_mobilenetv2_cost_table_is_cached_per_input_size(tiny_model) -> None:
    model = tiny_model("mobilenetv2")
    assert model.cost_table(28, 28) is model.cost_table(28, 28)
    assert model.cost_table(32, 32).dense_flops > model.cost_table(28, 28).dense_flops


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list_models())
def test_cuda_matches_cpu(tiny_model, mixed_batch, name: str, monkeypatch) -> None:
    # TF32 convolutions round to 10 mantissa bits: compare true float32 on both sides.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = tiny_model(name)
    x = mixed_batch()
    with torch.no_grad():
        cpu_logits, cpu_trace = model(x)
        gpu_logits, gpu_trace = model.cuda()(x.cuda())
    torch.testing.assert_close(gpu_logits.cpu(), cpu_logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(gpu_trace.ran.cpu(), cpu_trace.ran)
    assert torch.equal(gpu_trace.flops.cpu(), cpu_trace.flops)
