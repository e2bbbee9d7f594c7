"""Independent sigmoid gates and budget-conditioned routers: what they promise, on tiny models."""

from __future__ import annotations

import pytest
import torch

from drnets.inference import for_inference
from drnets.losses import cost_ramp, step_budgets
from drnets.model import create_model, policy_with
from drnets.router import Router, RoutingPolicy, branch_scale, gate_values
from drnets.train import TrainConfig

SIGMOID = {"router_input": "cell", "gate": "sigmoid", "open_bias": 2.0, "budgeted": True, "threshold": 0.5}


def test_sigmoid_gates_are_independent_and_sampled_only_in_training() -> None:
    logits = torch.randn(4, 5, 7, generator=torch.Generator().manual_seed(0))
    gates = gate_values(logits, "sigmoid", 1.0, training=False)
    assert torch.equal(gates, torch.sigmoid(logits))
    assert not torch.allclose(gates.sum(-1), torch.ones(4, 5))  # no distribution over an edge's branches
    torch.manual_seed(1)
    noisy = gate_values(logits, "sigmoid", 1.0, training=True)
    assert not torch.equal(noisy, gates) and noisy.min() >= 0 and noisy.max() <= 1


def test_sigmoid_scale_is_the_hard_decision_with_the_gates_gradient() -> None:
    gates = torch.tensor([[[0.9, 0.2, 0.6]]], requires_grad=True)
    ran = gates.detach() >= 0.5
    scale = branch_scale(gates, ran, "sigmoid")
    assert torch.equal(scale.detach(), ran.float() / 3)  # kept branches at 1/K, skipped at 0
    scale.sum().backward()
    assert torch.equal(gates.grad, torch.full_like(gates, 1 / 3))  # straight through


def test_softmax_scale_is_the_gate_weight() -> None:
    weights = torch.softmax(torch.randn(2, 3, 4), -1)
    assert branch_scale(weights, weights >= 0.2, "softmax") is weights


def test_gates_start_open() -> None:
    torch.manual_seed(0)
    router = Router(8, 16, 5, 7, open_bias=2.0)
    with torch.no_grad():
        gates = torch.sigmoid(router.logits(torch.randn(3, 8)))
    assert gates.min() > 0.8  # about sigmoid(2) = 0.88, up to the small initial weights' share


def test_a_larger_budget_opens_gates(tiny_model, mixed_batch) -> None:
    """At initialisation every gate moves up with logit(c): the first cell (whose inputs no route changes)
    keeps a superset for every image, and the batch's mean cost rises. Later cells see what earlier
    routes produced, so one image's total cost need not rise (DESIGN.md: per-sample monotonicity is
    not required). Unspread: the fixture's spread would also redraw the budget scales' signs."""
    model, x = tiny_model(spread=False, **SIGMOID), mixed_batch()
    with torch.no_grad():
        traces = [model(x, RoutingPolicy(0.5, budget=c))[1] for c in (0.02, 0.1, 0.3, 0.7, 0.98)]
    for low, high in zip(traces, traces[1:], strict=False):
        assert not torch.any(low.ran[:, 0] & ~high.ran[:, 0])
        assert high.flops.double().mean() >= low.flops.double().mean()
    assert traces[-1].flops.double().mean() > 1.5 * traces[0].flops.double().mean()


def test_the_default_budget_fills_a_policy_that_names_none(tiny_model, mixed_batch) -> None:
    model, x = tiny_model(**SIGMOID, budget=0.2), mixed_batch()
    assert model.default_policy.budget == 0.2
    assert model.resolve_policy(RoutingPolicy(0.5)).budget == 0.2
    with torch.no_grad():
        implicit = model(x, RoutingPolicy(0.5))[1]
        explicit = model(x, RoutingPolicy(0.5, budget=0.2))[1]
    assert torch.equal(implicit.ran, explicit.ran)
    assert tiny_model().resolve_policy(RoutingPolicy(0.1, budget=0.2)).budget is None  # not budgeted: dropped


@pytest.mark.parametrize("budget", [0.05, 0.3, 0.9])
def test_the_fast_path_answers_alike_at_every_budget(tiny_model, mixed_batch, budget: float) -> None:
    for config in (SIGMOID, {**SIGMOID, "router_input": "stem"}):
        plain, x = tiny_model(**config), mixed_batch()
        policy = RoutingPolicy(0.5, budget=budget)
        with torch.no_grad():
            logits, trace = plain(x, policy)
        fast_logits, fast_trace = for_inference(plain)(x, policy)
        assert torch.equal(fast_trace.ran, trace.ran)
        torch.testing.assert_close(fast_trace.gates, trace.gates, atol=1e-5, rtol=0)
        torch.testing.assert_close(fast_logits, logits, atol=1e-4, rtol=1e-4)


def test_policy_flags_are_checked_against_the_model(tiny_model) -> None:
    assert policy_with(tiny_model(**SIGMOID), budget=0.4).budget == 0.4
    assert policy_with(tiny_model(), threshold=0.3).threshold == 0.3
    with pytest.raises(ValueError, match="--budget applies to a DRNet with budget-conditioned routers"):
        policy_with(tiny_model(), budget=0.4)
    with pytest.raises(ValueError, match="--threshold applies to DRNets only"):
        policy_with(tiny_model("mobilenetv2"), threshold=0.3)
    assert policy_with(tiny_model("mobilenetv2")) is None


def test_bad_gate_and_budget_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="gate must be one of softmax, sigmoid"):
        create_model("drnet", gate="relu")
    with pytest.raises(ValueError, match="budget must lie in"):
        RoutingPolicy(budget=1.0)
    with pytest.raises(ValueError, match="budgets must satisfy"):
        TrainConfig(budget_min=0.5, budget_max=0.2)


def test_each_step_trains_the_largest_the_smallest_and_a_random_budget() -> None:
    cfg = TrainConfig(budget_min=0.05, budget_max=0.6)
    torch.manual_seed(0)
    largest, smallest, middle = step_budgets(cfg)
    assert (largest, smallest) == (0.6, 0.05) and 0.05 <= middle <= 0.6
    assert len(step_budgets(TrainConfig(sandwich=False))) == 1


def test_the_cost_term_waits_for_the_warmup_then_ramps() -> None:
    assert [cost_ramp(s, 100, 0.3) for s in (0, 29, 30, 35, 40, 99)] == pytest.approx([0.0, 0.0, 0.0, 0.5, 1.0, 1.0])
    assert cost_ramp(0, 100, 0.0) == 1.0


def test_a_budgeted_drnet_is_evaluated_over_budgets(tiny_model, tmp_path) -> None:
    """eval.json and sweep.csv of a budget-conditioned DRNet: one row per budget, its own included."""
    from drnets.checkpoint import load_checkpoint, save_checkpoint
    from drnets.data import FASHION_MNIST_CLASSES, load_dataset
    from drnets.evaluate import SWEEP_BUDGETS, evaluate, sweep_csv

    training = {"dataset": "fashion-mnist", "mean": [0.286], "std": [0.353], "input_size": [1, 28, 28]}
    folder = save_checkpoint(
        tmp_path / "b", tiny_model(spread=False, **SIGMOID, budget=0.12), "drnet", FASHION_MNIST_CLASSES, training
    )
    data = load_dataset("fashion-mnist", "test").subset(64)
    result = evaluate(load_checkpoint(folder), data, budget=0.2)
    assert result["budget"] == 0.2
    assert [row["budget"] for row in result["sweep"]] == sorted({*SWEEP_BUDGETS, 0.2})
    assert sweep_csv(result["sweep"]).splitlines()[0] == "budget,threshold,accuracy,flops_mean,params_used_mean"
    flops = [row["flops_mean"] for row in result["sweep"]]
    assert flops[-1] > flops[0]
