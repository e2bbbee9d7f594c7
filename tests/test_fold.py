"""Batch norm folded into convolutions at inference: same outputs, every pair folded, never a stale fold."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune
from torch.profiler import ProfilerActivity, profile

from drnets.fold import LayerStack, conv_bn, folding, relu_output
from drnets.model import create_model
from drnets.ops import FactorizedReduce, ReLUConvBN, create_branch


def randomize_batch_norms(module: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine weights far from their initial 0/1, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=g))
            bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if bn.weight is not None:
                bn.weight.data.copy_(torch.randn(n, generator=g))
                bn.bias.data.copy_(torch.randn(n, generator=g))
    return module.eval()


def batch_norm_calls(run) -> int:
    """How many batch norms ``run()`` computes (a folded one is never computed; counted without module
    hooks, which would stop the folding)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::batch_norm")


BRANCHES = [
    lambda: create_branch("sep_conv_3x3", 6, 1),
    lambda: create_branch("sep_conv_5x5", 6, 2),
    lambda: create_branch("dil_conv_3x3", 6, 2),
    lambda: create_branch("dil_conv_5x5", 6, 1),
    lambda: create_branch("skip_connect", 6, 2),  # FactorizedReduce
    lambda: ReLUConvBN(6, 4, 1, 1, 0),
]


@pytest.mark.parametrize("make", BRANCHES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_branches_equal_the_modules_they_fold(make, channels_last: bool) -> None:
    branch = randomize_batch_norms(make())
    x = torch.randn(3, 6, 10, 10)
    if channels_last:
        branch, x = branch.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.enable_grad():  # autograd on: the modules run as they are
        expected = branch(x)
        assert batch_norm_calls(lambda: branch(x)) > 0
    with torch.no_grad():
        assert torch.allclose(branch(x), expected, atol=1e-5)
        assert batch_norm_calls(lambda: branch(x)) == 0  # folded
    with torch.inference_mode():
        assert torch.allclose(branch(x), expected, atol=1e-5)


def test_factorized_reduce_at_an_odd_size_runs_its_batch_norm() -> None:
    # DARTS pads the odd path's missing row with zeros before the BN shifts it: no piecewise fold there.
    reduce = randomize_batch_norms(FactorizedReduce(6, 6))
    x = torch.randn(2, 6, 9, 7)
    with torch.enable_grad():
        expected = reduce(x)
    with torch.no_grad():
        assert torch.allclose(reduce(x), expected, atol=1e-5)
        assert batch_norm_calls(lambda: reduce(x)) == 1


@pytest.mark.parametrize("name", ["drnet", "dense", "mobilenetv2"])
def test_every_batch_norm_of_every_model_folds_at_inference_and_runs_with_gradients(name: str) -> None:
    model = randomize_batch_norms(
        create_model(name, channels=8, num_nodes=2) if name != "mobilenetv2" else create_model(name)
    )
    x = torch.randn(4, 1, 28, 28)
    with torch.enable_grad():
        expected, trace = model(x)
        every = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert batch_norm_calls(lambda: model(x)) >= (every if name == "mobilenetv2" else 1)
    with torch.inference_mode():
        logits, folded_trace = model(x)
        assert batch_norm_calls(lambda: model(x)) == 0
    assert torch.allclose(logits, expected, atol=1e-4)
    assert torch.equal(folded_trace.flops, trace.flops) and torch.equal(folded_trace.params, trace.params)


@pytest.mark.parametrize(
    "change",
    [
        lambda conv, bn: conv.weight.mul_(2),  # in place under no_grad, as optimisers step
        lambda conv, bn: bn.weight.add_(1),
        lambda conv, bn: bn.bias.add_(1),
        lambda conv, bn: bn.running_mean.add_(1),  # batch norm statistics updated in training
        lambda conv, bn: bn.running_var.mul_(3),
        lambda conv, bn: setattr(bn.bias, "data", bn.bias.data + 1),  # replaced, not changed in place
        lambda conv, bn: bn.load_state_dict(randomize_batch_norms(nn.BatchNorm2d(4), seed=1).state_dict()),
    ],
)
def test_a_fold_is_recomputed_after_any_of_its_tensors_changes(change) -> None:
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), randomize_batch_norms(nn.BatchNorm2d(4))
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        conv_bn(conv, bn, x)  # caches the fold
        change(conv, bn)
        assert torch.allclose(conv_bn(conv, bn, x), bn(conv(x)), atol=1e-5)


def test_a_fold_follows_the_module_to_another_dtype() -> None:
    stack = randomize_batch_norms(LayerStack(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)))
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        stack(x)
        stack = stack.double()
        assert stack(x.double()).dtype == torch.float64
        assert torch.allclose(stack(x.double()), stack[1](stack[0](x.double())))


def test_training_mode_batch_norm_is_never_folded() -> None:
    conv, bn = nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4)
    x = torch.randn(8, 3, 5, 5) * 3 + 1
    with torch.no_grad():
        out = conv_bn(conv, bn, x)  # batch statistics, and the running ones updated
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert bn.num_batches_tracked.item() == 1


def test_layer_stack_keeps_sequential_state_dict_keys() -> None:
    layers = [nn.ReLU(), nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)]
    assert LayerStack(*layers).state_dict().keys() == nn.Sequential(*layers).state_dict().keys()


class Doubled(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2 * weight


def test_hooked_pruned_or_parametrized_modules_run_their_own_forwards() -> None:
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), randomize_batch_norms(nn.BatchNorm2d(4))
    x = torch.randn(2, 3, 6, 6)
    seen = []
    handle = bn.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        out = conv_bn(conv, bn, x)
    handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], out)
    prune.l1_unstructured(conv, "weight", amount=0.5)  # the weight becomes weight_orig x mask, set by a hook
    with torch.no_grad():
        assert torch.allclose(
            conv_bn(conv, bn, x), bn(nn.functional.conv2d(x, conv.weight_orig * conv.weight_mask, padding=1))
        )
    parametrized = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    raw = parametrized.weight.detach().clone()
    parametrize.register_parametrization(parametrized, "weight", Doubled())
    with torch.no_grad():
        assert torch.allclose(conv_bn(parametrized, bn, x), bn(nn.functional.conv2d(x, 2 * raw, padding=1)), atol=1e-5)


def test_folding_can_be_switched_off_for_a_comparison() -> None:
    stack = randomize_batch_norms(LayerStack(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)))
    x = torch.randn(2, 3, 6, 6)
    with torch.inference_mode():
        with folding(False):
            assert batch_norm_calls(lambda: stack(x)) == 1
        assert batch_norm_calls(lambda: stack(x)) == 0


def test_a_hook_on_either_convolution_of_factorized_reduce_unfolds_it() -> None:
    reduce = randomize_batch_norms(FactorizedReduce(6, 6))
    x = torch.randn(2, 6, 8, 8)
    seen = []
    handle = reduce.conv_2.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    with torch.no_grad():
        reduce(x)
    handle.remove()
    assert seen == [torch.Size([2, 3, 4, 4])]


def test_relu_output_runs_in_place_only_where_nothing_else_can_hold_the_map() -> None:
    producer = nn.Conv2d(2, 2, 1)
    x = torch.randn(1, 2, 3, 3)
    with torch.no_grad():
        y = x.clone()
        assert relu_output(y, producer) is y and torch.equal(y, x.relu())  # no hook, no autograd: in place
        handle = producer.register_forward_hook(lambda module, args, out: None)
        y = x.clone()
        assert relu_output(y, producer) is not y and torch.equal(y, x)  # a hook may hold the raw map
        handle.remove()
        handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: None)
        y = x.clone()
        assert relu_output(y, producer) is not y and torch.equal(y, x)
        handle.remove()
    y = x.clone().requires_grad_()
    assert relu_output(y, producer) is not y  # autograd: out of place


def test_a_cell_hook_sees_the_cell_output_before_the_models_relu() -> None:
    """The model rectifies cell outputs in place at inference unless a hook on the cell could hold them."""
    model = randomize_batch_norms(create_model("drnet", channels=8, num_nodes=2))
    x = torch.randn(3, 1, 28, 28)
    seen = []
    handle = model.cells[0].register_forward_hook(lambda module, args, out: seen.append(out[0]))
    with torch.inference_mode():
        hooked_logits = model(x)[0]
    handle.remove()
    assert (seen[0] < 0).any()  # raw, not rectified after the hook ran
    with torch.inference_mode():
        assert torch.allclose(model(x)[0], hooked_logits, atol=1e-5)


@pytest.mark.parametrize("make", BRANCHES[:5])
def test_a_relu_led_branch_given_rectified_rows_skips_its_relu(make) -> None:
    branch = randomize_batch_norms(make())
    assert branch.rectifies_input
    x = torch.randn(3, 6, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(branch(x.relu(), rectified=True), branch(x), atol=1e-5, rtol=0)
    assert (
        not create_branch("max_pool_3x3", 6, 1).rectifies_input
        and not create_branch("skip_connect", 6, 1).rectifies_input
    )
    branch.op[0].register_forward_hook(lambda module, args, out: None)
    assert not branch.rectifies_input  # its hooked ReLU must run as a module
