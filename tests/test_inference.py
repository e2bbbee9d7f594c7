"""The inference fast path: the same answers, routes and costs as the plain model, on real test images."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from drnets.checkpoint import load_checkpoint
from drnets.data import load_dataset, normalization, to_input
from drnets.inference import (
    FastPool,
    FoldedConv,
    StackedRouters,
    avg_pool_3x3_depthwise,
    conv_matmul,
    for_inference,
    max_pool_3x3_separable,
)
from drnets.router import RoutingPolicy

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "assets" / "models"
POLICIES = [None, RoutingPolicy(0.05), RoutingPolicy(0.3), RoutingPolicy(0.0, top_k=2), RoutingPolicy(0.6)]


def assert_same_answers(plain, fast, x, policy, logit_atol=1e-4) -> None:
    """Same route, same cost, same class; logits equal up to the rounding that folding a BN changes."""
    with torch.no_grad():
        logits, trace = plain(x, policy)
    fast_logits, fast_trace = fast(x, policy)
    assert torch.equal(fast_trace.ran, trace.ran)
    assert torch.equal(fast_trace.flops, trace.flops) and torch.equal(fast_trace.params, trace.params)
    torch.testing.assert_close(fast_trace.gates, trace.gates, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast_logits, logits, atol=logit_atol, rtol=1e-4)
    assert torch.equal(fast_logits.argmax(1), logits.argmax(1))


@pytest.fixture(scope="module")
def test_images() -> torch.Tensor:
    """512 real Fashion-MNIST test images, normalised as the shipped models were trained."""
    data = load_dataset("fashion-mnist", "test").subset(512)
    return to_input(data.images, *normalization("fashion-mnist", 1))


@pytest.mark.parametrize("name", ["drnet", "dense", "mobilenetv2"])
def test_shipped_models_answer_alike_on_real_test_images(name: str, test_images: torch.Tensor) -> None:
    plain = load_checkpoint(MODELS / name).model.eval()
    fast = for_inference(plain)
    policies = POLICIES if name == "drnet" else [None]
    for policy in policies:
        for batch in (test_images[:1], test_images[1:2], test_images[:256], test_images[256:]):
            assert_same_answers(plain, fast, batch, policy)


def test_the_shipped_drnet_routes_differently_across_the_real_images(test_images: torch.Tensor) -> None:
    """Guard: the equality above covers mixed batches (branches run on sub-batches), not one route for all."""
    fast = for_inference(load_checkpoint(MODELS / "drnet").model)
    ran = fast(test_images[:256], RoutingPolicy(0.05))[1].ran
    assert (ran != ran[:1]).any()


@pytest.mark.parametrize("policy", POLICIES, ids=str)
@pytest.mark.parametrize(
    "config",
    [{}, {"router_input": "cell"}, {"router_grid": 2, "router_relu": True}, {"in_channels": 3}],
    ids=["stem", "cell", "grid-relu", "rgb"],
)
def test_tiny_drnets_answer_alike(tiny_model, mixed_batch, config: dict, policy) -> None:
    plain = tiny_model(**config)
    fast = for_inference(plain)
    for shape in [(config.get("in_channels", 1), 28, 28), (config.get("in_channels", 1), 27, 30)]:  # odd sizes too
        assert_same_answers(plain, fast, mixed_batch(shape), policy)


def test_channels_last_inputs_answer_alike(tiny_model, mixed_batch) -> None:
    plain = tiny_model().to(memory_format=torch.channels_last)
    x = mixed_batch().contiguous(memory_format=torch.channels_last)
    assert_same_answers(plain, for_inference(plain), x, RoutingPolicy(0.15))


def test_forced_route_is_obeyed_on_the_fast_path(tiny_model, mixed_batch) -> None:
    plain, x = tiny_model(), mixed_batch(n=4)
    route = torch.rand(4, 3, 5, 7, generator=torch.Generator().manual_seed(0)) < 0.4
    with torch.no_grad():
        logits, trace = plain(x, forced_route=route)
    fast_logits, fast_trace = for_inference(plain)(x, forced_route=route)
    assert torch.equal(fast_trace.ran, route) and torch.equal(trace.ran, route)
    torch.testing.assert_close(fast_logits, logits, atol=1e-4, rtol=1e-4)


def test_the_fast_path_shares_the_plain_weights_and_leaves_the_model_as_it_was(tiny_model) -> None:
    plain = tiny_model().train()
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    fast = for_inference(plain)
    assert plain.training  # building the twin changes no mode on the shared model
    assert fast.plain is plain
    assert all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())
    assert fast.cells[0].plain[0] is plain.cells[0]


def test_stacked_routers_give_each_routers_own_logits(tiny_model) -> None:
    plain = tiny_model(router_grid=2)
    routers = [cell.router for cell in plain.cells]
    stacked = StackedRouters(routers)
    pooled = torch.randn(5, routers[0].fc1.in_features)
    with torch.no_grad():
        torch.testing.assert_close(stacked(pooled), torch.stack([r.logits(pooled) for r in routers]))


@pytest.mark.parametrize("name", ["drnet", "dense"])
def test_gpu_convolution_form_answers_alike_under_autocast(tiny_model, mixed_batch, name: str, monkeypatch) -> None:
    """On a GPU every ungrouped DRNet convolution runs as ``conv_matmul``; here on the CPU the whole fast
    model takes that form under autocast. The branches summed into one node must share a dtype."""
    plain, x = tiny_model(name), mixed_batch(n=7)
    fast = for_inference(plain)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, expected_trace = fast(x)
        monkeypatch.setattr(FoldedConv, "uses_matmul", lambda self, x: self.matmul)
        logits, trace = fast(x)
    assert logits.dtype == expected.dtype == torch.bfloat16
    assert (trace.ran == expected_trace.ran).float().mean() > 0.95  # bfloat16 rounding may flip a gate at the threshold
    torch.testing.assert_close(logits.float(), expected.float(), atol=0.15, rtol=0.05)
    monkeypatch.undo()
    monkeypatch.setattr(FoldedConv, "uses_matmul", lambda self, x: self.matmul)
    assert_same_answers(plain, fast, x, None)  # and in float32, the plain model's answers


def test_only_the_fast_path_touches_torch_internals_or_the_allocator() -> None:
    """Private torch attributes and process allocator settings live in drnets/inference.py alone."""
    private = re.compile(
        r"\._(conv_forward|forward_hooks|forward_pre_hooks|global_forward|version|parameters\[|buffers\[)|mallopt"
    )
    touching = sorted(p.name for p in (ROOT / "drnets").glob("*.py") if private.search(p.read_text()))
    assert touching == ["inference.py"]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(1, 12, 28, 28), (3, 5, 7, 9), (2, 48, 1, 1), (4, 24, 14, 2), (64, 8, 7, 7)])
def test_separable_max_pool_equals_aten_max_pool(shape: tuple[int, ...], channels_last: bool) -> None:
    """The inference fast path of a stride-1 max pool gives exactly what nn.MaxPool2d gives, in the same layout."""
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    fast = FastPool(torch.nn.MaxPool2d(3, 1, 1))(x)
    assert torch.equal(fast, torch.nn.functional.max_pool2d(x, 3, 1, 1))
    assert torch.equal(max_pool_3x3_separable(x), fast)
    if channels_last:
        assert fast.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", [(1, 12, 28, 28), (3, 5, 7, 9), (2, 48, 1, 1), (4, 24, 14, 2), (64, 12, 28, 28)])
def test_depthwise_avg_pool_equals_aten_avg_pool(shape: tuple[int, ...], stride: int, channels_last: bool) -> None:
    """The depthwise average pool (1/9s, border windows rescaled) matches nn.AvgPool2d(count_include_pad=False), borders too."""
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = torch.nn.functional.avg_pool2d(x, 3, stride, 1, count_include_pad=False)
    assert torch.allclose(avg_pool_3x3_depthwise(x, stride), expected, atol=1e-6)
    fast = FastPool(torch.nn.AvgPool2d(3, stride, 1, count_include_pad=False))(x)  # depthwise from DEPTHWISE_MIN_PIXELS
    assert torch.allclose(fast, expected, atol=1e-6)
    if channels_last and shape[1] > 1:
        assert fast.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    ("layout", "kernel", "stride", "padding", "dilation"),
    [
        ("nchw", 1, 1, 0, 1),
        ("channels_last", 1, 1, 0, 1),
        ("sliced", 1, 1, 0, 1),
        ("nchw", 3, 1, 1, 1),  # the stem
        ("channels_last", 3, 2, 1, 1),
        ("nchw", 5, 1, 4, 2),
    ],
)
@pytest.mark.parametrize("with_bias", [False, True])  # a folded BN adds one
def test_conv_matmul_equals_conv2d_and_its_gradients(
    layout: str, kernel: int, stride: int, padding: int, dilation: int, with_bias: bool
) -> None:
    """The GPU form of a fast-path convolution (a matrix product; run here on the CPU) is conv2d, backward
    too, and a 1x1 keeps the input's memory format."""
    torch.manual_seed(0)
    x = torch.randn(5, 6, 9, 7)
    forms = {"nchw": x, "channels_last": x.contiguous(memory_format=torch.channels_last), "sliced": x[..., ::2, 1::2]}
    x = forms[layout]
    weight = torch.randn(4, 6, kernel, kernel)
    geometry = {"stride": (stride, stride), "padding": (padding, padding), "dilation": (dilation, dilation)}
    geometry["bias"] = torch.randn(4) if with_bias else None
    results = []
    for fn in (torch.nn.functional.conv2d, conv_matmul):
        xi, wi = x.detach().requires_grad_(), weight.clone().requires_grad_()
        out = fn(xi, wi, **geometry)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        results.append((out, xi.grad, wi.grad))
    for expected, actual in zip(*results, strict=True):
        assert actual.shape == expected.shape and torch.allclose(actual, expected, atol=1e-4)
    if layout == "channels_last" and kernel == 1:
        assert results[1][0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("kernel", [1, 3])
def test_conv_matmul_with_bias_keeps_the_autocast_dtype(layout: str, kernel: int) -> None:
    """Under autocast conv2d returns half precision, bias included; so must its matrix-product form, or the
    routed branches of one node would mix dtypes (a folded BN gives every convolution a bias)."""
    x = torch.randn(2, 6, 9, 7)
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    weight, bias, padding = torch.randn(4, 6, kernel, kernel), torch.randn(4), (kernel // 2, kernel // 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = torch.nn.functional.conv2d(x, weight, bias, padding=padding)
        out = conv_matmul(x, weight, padding=padding, bias=bias)
    assert out.dtype == expected.dtype == torch.bfloat16
    assert torch.allclose(out.float(), expected.float(), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("name", ["drnet", "mobilenetv2"])
def test_the_fast_pass_gives_the_features_the_detector_reads(name: str, test_images: torch.Tensor) -> None:
    """One pass gives the answer and the pooled features drnets.ood fits its detector on (plain model)."""
    from drnets.ood import pooled_features

    plain = load_checkpoint(MODELS / name).model.eval()
    fast = for_inference(plain)
    x = test_images[:64]
    logits, trace, features = fast.forward_with_features(x)
    expected_logits, expected_trace = fast(x)
    assert torch.equal(logits, expected_logits) and torch.equal(trace.flops, expected_trace.flops)
    torch.testing.assert_close(features, pooled_features(plain, x), atol=1e-4, rtol=1e-4)
