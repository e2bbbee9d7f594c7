"""DRNet, its dense supernet and the MobileNetV2 baseline, built from frozen configs.

Every model's ``forward(x)`` returns ``(logits, RoutingTrace)`` so that training,
evaluation, the app and the benchmarks treat routed and static networks alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .cell import Cell, Execution
from .cost import CostTable, static_cost_table
from .ops import PRIMITIVES, Pool, param_count, sequential_flops
from .router import GATES, RoutingPolicy, pool_maps
from .trace import RoutingTrace


def _check_input(x: torch.Tensor, in_channels: int, min_size: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a batch of images [B, C, H, W], got a tensor of shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"this model takes {in_channels}-channel images, got {x.shape[1]} channels (input shape {tuple(x.shape)})"
        )
    if min(x.shape[-2:]) < min_size:
        raise ValueError(f"images must be at least {min_size}x{min_size} pixels, got {tuple(x.shape[-2:])}")


@dataclass(frozen=True)
class DRNetConfig:
    """A DRNet (or, with ``dynamic=False`` and ``threshold=0``, its dense supernet)."""

    in_channels: int = 1  # Fashion-MNIST is grayscale; 3 for CIFAR
    num_classes: int = 10
    channels: int = 16  # C of the first cells (DARTS CIFAR: 36); sized for a 2-core CPU
    num_cells: int = 5  # reduction cells sit at 1/3 and 2/3 of the depth (DARTS)
    num_nodes: int = 3  # intermediate nodes per cell (DARTS: 4); 3 gives 9 edges
    stem_multiplier: int = 3  # stem width = 3 * C (DARTS)
    branches: tuple[str, ...] = PRIMITIVES  # candidate branches on every edge
    router_hidden: int = 32  # hidden width of each cell's RouterNet MLP
    dynamic: bool = True  # instance-aware router; False = one learned weight table (supernet)
    # What each router reads: "stem" = the stem output (default), so no route depends on another
    # cell's route and raising the threshold can never raise a sample's FLOPs; "cell" = its
    # cell's two inputs (DESIGN.md's first sketch, more instance-aware in later cells, but a
    # higher threshold upstream can then steer a later cell to a dearer branch; README "Known limits").
    router_input: str = "stem"
    router_grid: int = 1  # the router pools what it reads onto a grid x grid layout (1 = global average)
    router_relu: bool = False  # rectify what the router reads before pooling (see router.pool_maps)
    threshold: float = 0.1  # inference: run a branch if its gate weight >= threshold
    top_k: int | None = None  # inference: also cap the branches per edge at the k heaviest
    gate: str = "softmax"  # "softmax" over an edge's branches (the paper) or independent "sigmoid" gates
    open_bias: float = 0.0  # initial gate-logit bias; 2 starts sigmoid gates ~88% open (ConvNet-AIG)
    budgeted: bool = False  # routers read a budget c (RoutingPolicy.budget) and shift their gates by it
    budget: float = 0.3  # the budget c a budgeted model runs at when the policy names none

    def __post_init__(self) -> None:
        object.__setattr__(self, "branches", tuple(self.branches))
        unknown = [b for b in self.branches if b not in PRIMITIVES]
        if unknown:
            raise ValueError(f"unknown branch name(s) {unknown} in config; known branches: {', '.join(PRIMITIVES)}")
        if not self.branches:
            raise ValueError("a DRNet config needs at least one branch")
        if self.num_cells < 1 or self.num_nodes < 1 or self.channels < 2:
            raise ValueError("num_cells, num_nodes must be >= 1 and channels >= 2")
        RoutingPolicy(self.threshold, self.top_k, budget=self.budget)  # validates all three
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {', '.join(GATES)}, got {self.gate!r}")
        if self.router_grid < 1:
            raise ValueError(f"router_grid must be >= 1, got {self.router_grid}")
        if self.router_input not in ("cell", "stem"):
            raise ValueError(f"router_input must be 'cell' or 'stem', got {self.router_input!r}")

    def reduction_cells(self) -> tuple[int, ...]:
        return tuple(sorted({self.num_cells // 3, 2 * self.num_cells // 3} - {0} or {self.num_cells // 2}))


class DRNet(nn.Module):
    """Dynamic Routing Network: a DARTS-style cell stack whose branches are chosen per input."""

    min_input_size = 8

    def __init__(self, config: DRNetConfig):
        super().__init__()
        self.config = config
        c_stem = config.stem_multiplier * config.channels
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem)
        )
        c_pp, c_p, c = c_stem, c_stem, config.channels
        cells, reduction_prev = [], False
        for i in range(config.num_cells):
            reduction = i in config.reduction_cells()
            c = c * 2 if reduction else c
            cell = Cell(
                c_pp, c_p, c, reduction, reduction_prev, config.num_nodes, config.branches, config.router_hidden,
                config.dynamic, c_stem if config.router_input == "stem" else None, config.router_grid, config.router_relu,
                config.gate, config.budgeted, config.open_bias,
            )  # fmt: skip
            cells.append(cell)
            c_pp, c_p, reduction_prev = c_p, cell.out_channels, reduction
        self.cells = nn.ModuleList(cells)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, config.num_classes)
        self._cost_tables: dict[tuple[int, int], CostTable] = {}

    @property
    def default_policy(self) -> RoutingPolicy:
        """The policy the model was trained and shipped with (its config's threshold, top-k and budget)."""
        return self.resolve_policy(RoutingPolicy(self.config.threshold, self.config.top_k))

    def resolve_policy(self, policy: RoutingPolicy | None) -> RoutingPolicy:
        """``policy`` with the model's defaults filled in: its own policy for None, its default budget
        for a budgeted model's policy that names none; other models drop the budget."""
        if policy is None:
            return self.default_policy
        budget = (policy.budget or self.config.budget) if self.config.budgeted else None
        return policy if budget == policy.budget else dataclasses.replace(policy, budget=budget)

    def forward_features(
        self,
        x: torch.Tensor,
        policy: RoutingPolicy | None = None,
        forced_route: torch.Tensor | None = None,
        execution: Execution = "sparse",
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features [B, C, H, W], gates [B, L, E, K], ran [B, L, E, K]."""
        self.check_input(x, forced_route)
        policy = self.resolve_policy(policy)
        s0 = s1 = self.stem(x)
        context = self.router_context(s1)
        gates, ran = [], []
        for i, cell in enumerate(self.cells):
            forced = forced_route[:, i] if forced_route is not None else None
            out, w, r = cell(s0, s1, policy, forced, execution, context)
            s0, s1 = s1, out
            gates.append(w)
            ran.append(r)
        return s1, torch.stack(gates, dim=1), torch.stack(ran, dim=1)

    def router_context(self, stem: torch.Tensor) -> torch.Tensor | None:
        """What stem-reading routers read, pooled once for every cell; None where each reads its cell."""
        if self.config.router_input != "stem":
            return None
        return pool_maps((stem,), self.config.router_grid, self.config.router_relu)

    def check_input(self, x: torch.Tensor, forced_route: torch.Tensor | None) -> None:
        _check_input(x, self.config.in_channels, self.min_input_size)
        if forced_route is not None:
            self._check_route(forced_route, x.shape[0])

    def _check_route(self, route: torch.Tensor, batch: int) -> None:
        shape = (len(self.cells), len(self.cells[0].edges), len(self.config.branches))
        if (
            route.dtype != torch.bool
            or route.dim() != 4
            or route.shape[0] not in (1, batch)
            or route.shape[1:] != shape
        ):
            raise ValueError(
                f"forced_route must be a bool tensor [B or 1, {', '.join(map(str, shape))}] (cells, edges, branches) "
                f"for a batch of {batch}; got {route.dtype} of shape {tuple(route.shape)}"
            )

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.global_pool(features).flatten(1))

    def forward(
        self,
        x: torch.Tensor,
        policy: RoutingPolicy | None = None,
        forced_route: torch.Tensor | None = None,
        execution: Execution = "sparse",
    ) -> tuple[torch.Tensor, RoutingTrace]:
        """Logits [B, classes] and the routing trace.

        ``policy``: threshold / top-k / temperature (default: ``default_policy``).
        ``forced_route`` ([B or 1, L, E, K] bool) runs exactly that route instead of the
        router's choice; the gate weights still come from the router. ``execution="masked"``
        runs every branch on every sample times weight x mask: the slow reference.
        """
        features, gates, ran = self.forward_features(x, policy, forced_route, execution)
        logits = self.forward_head(features)
        return logits, self.trace(logits, gates, ran, x.shape[-2], x.shape[-1])

    def trace(self, logits: torch.Tensor, gates: torch.Tensor, ran: torch.Tensor, h: int, w: int) -> RoutingTrace:
        """The routing trace of a pass over h x w inputs that took the route ``ran``."""
        table = self.cost_table(h, w)
        cell_flops, cell_params, flops, params = table.route_cost(ran)
        return RoutingTrace(
            logits=logits,
            gates=gates,
            ran=ran,
            cell_flops=cell_flops,
            cell_params=cell_params,
            flops=flops,
            params=params,
            dense_flops=table.dense_flops,
            dense_params=table.dense_params,
            branch_names=self.config.branches,
            edges=tuple(self.cells[0].edges),
            reduction=tuple(cell.reduction for cell in self.cells),
        )

    def cost_table(self, h: int, w: int) -> CostTable:
        """Analytic cost of every part at input size h x w (cached per size)."""
        if (h, w) not in self._cost_tables:
            self._cost_tables[(h, w)] = self._build_cost_table(h, w)
        return self._cost_tables[(h, w)]

    def _build_cost_table(self, h: int, w: int) -> CostTable:
        stem_flops, h, w = sequential_flops(self.stem, h, w)
        sizes = [(h, w), (h, w)]  # spatial size of s0, s1
        cell_flops, cell_params, branch_flops, branch_params, branch_pooled = [], [], [], [], []
        for cell in self.cells:
            (h0, w0), (h1, w1) = sizes
            fixed = cell.preprocess0.flops(h0, w0) + cell.preprocess1.flops(h1, w1) + cell.router.flops()
            stride = 2 if cell.reduction else 1
            h_out, w_out = (h1 - 1) // stride + 1, (w1 - 1) // stride + 1
            edge_flops = [
                [branch.flops(*((h1, w1) if src < 2 else (h_out, w_out))) for branch in cell.branches[e]]
                for e, (src, _) in enumerate(cell.edges)
            ]
            cell_flops.append(fixed)
            cell_params.append(cell.fixed_params())
            branch_flops.append(edge_flops)
            branch_params.append([[b.params() for b in edge] for edge in cell.branches])
            pooled = cell.channels * h_out * w_out  # every branch writes one node map
            branch_pooled.append([[pooled if isinstance(b, Pool) else 0 for b in edge] for edge in cell.branches])
            sizes = [(h1, w1), (h_out, w_out)]
        head_flops = 2 * self.classifier.in_features * self.classifier.out_features
        return CostTable(
            base_flops=stem_flops + head_flops,
            base_params=param_count(self.stem) + param_count(self.classifier),
            cell_flops=torch.tensor(cell_flops, dtype=torch.long),
            cell_params=torch.tensor(cell_params, dtype=torch.long),
            branch_flops=torch.tensor(branch_flops, dtype=torch.long),
            branch_params=torch.tensor(branch_params, dtype=torch.long),
            branch_pooled=torch.tensor(branch_pooled, dtype=torch.long),
        )


@dataclass(frozen=True)
class MobileNetV2Config:
    """MobileNetV2 (Sandler et al. 2018) in its CIFAR form: stride-1 stem, first strided stage at stride 1."""

    in_channels: int = 1
    num_classes: int = 10
    width_mult: float = 1.0
    stem_channels: int = 32  # paper Table 2
    last_channels: int = 1280  # paper Table 2
    # (t expansion, c channels, n repeats, s first stride); paper Table 2 with the stride of
    # the 24-channel stage set to 1 for 32x32 inputs, as in kuangliu/pytorch-cifar.
    blocks: tuple[tuple[int, int, int, int], ...] = field(
        default=(
            (1, 16, 1, 1),
            (6, 24, 2, 1),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
            (6, 160, 3, 2),
            (6, 320, 1, 1),
        )
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(tuple(int(v) for v in b) for b in self.blocks))


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of 8, never below 90% of the request (torchvision)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    ]


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        layers = _conv_bn_relu(c_in, hidden, 1) if expansion != 1 else []
        layers += _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """Static baseline: every sample pays the whole network; its trace has no cells."""

    min_input_size = 8

    def __init__(self, config: MobileNetV2Config):
        super().__init__()
        self.config = config
        c_in = _make_divisible(config.stem_channels * config.width_mult)
        layers: list[nn.Module] = [nn.Sequential(*_conv_bn_relu(config.in_channels, c_in, 3, 1))]
        for t, c, n, s in config.blocks:
            c_out = _make_divisible(c * config.width_mult)
            for i in range(n):
                layers.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        c_last = _make_divisible(config.last_channels * max(1.0, config.width_mult))
        layers.append(nn.Sequential(*_conv_bn_relu(c_in, c_last, 1)))
        self.features = nn.Sequential(*layers)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_last, config.num_classes)
        self._cost_tables: dict[tuple[int, int], CostTable] = {}

    def check_input(self, x: torch.Tensor) -> None:
        _check_input(x, self.config.in_channels, self.min_input_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.global_pool(features).flatten(1))

    def forward(
        self, x: torch.Tensor, policy: RoutingPolicy | None = None, forced_route: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, RoutingTrace]:
        """Logits and a trace with no cells; ``policy`` and ``forced_route`` are accepted for a
        uniform call and ignored (there is nothing to route)."""
        logits = self.forward_head(self.forward_features(x))
        return logits, self.trace(logits, x.shape[-2], x.shape[-1])

    def trace(self, logits: torch.Tensor, h: int, w: int) -> RoutingTrace:
        table = self.cost_table(h, w)
        b = logits.shape[0]
        empty = torch.zeros(b, 0, 0, 0)
        return RoutingTrace(
            logits=logits,
            gates=empty,
            ran=empty.bool(),
            cell_flops=torch.zeros(b, 0, dtype=torch.long),
            cell_params=torch.zeros(b, 0, dtype=torch.long),
            flops=torch.full((b,), table.dense_flops, dtype=torch.long),
            params=torch.full((b,), table.dense_params, dtype=torch.long),
            dense_flops=table.dense_flops,
            dense_params=table.dense_params,
        )

    def cost_table(self, h: int, w: int) -> CostTable:
        if (h, w) not in self._cost_tables:
            flops, fh, fw = 0, h, w  # fh, fw walk the feature map; (h, w) stays the cache key
            for block in self.features:
                layers = block.conv if isinstance(block, InvertedResidual) else block
                block_flops, fh, fw = sequential_flops(layers, fh, fw)
                flops += block_flops
            flops += 2 * self.classifier.in_features * self.classifier.out_features
            self._cost_tables[(h, w)] = static_cost_table(flops, param_count(self))
        return self._cost_tables[(h, w)]


# ---- registry: the CLI, the app and the tests all read this one list ----

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(fn: ModelFactory) -> ModelFactory:
    _REGISTRY[fn.__name__] = fn
    return fn


@register_model
def drnet(**overrides: Any) -> DRNet:
    """The DRNet: instance-aware routers, branches below the threshold are skipped."""
    return DRNet(DRNetConfig(**overrides))


@register_model
def dense(**overrides: Any) -> DRNet:
    """Dense supernet: the same cells with every branch on and input-independent weights."""
    return DRNet(DRNetConfig(**{"dynamic": False, "threshold": 0.0, **overrides}))


@register_model
def mobilenetv2(**overrides: Any) -> MobileNetV2:
    """MobileNetV2 width 1.0, CIFAR form: the paper's static baseline."""
    return MobileNetV2(MobileNetV2Config(**overrides))


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **config: Any) -> nn.Module:
    """Build a registered model; unknown names or config keys fail with a clear message.

    Example:
        >>> model = create_model("drnet", in_channels=1, num_classes=10)
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    try:
        return _REGISTRY[name](**config)
    except TypeError as err:
        raise ValueError(f"invalid config for model {name!r}: {err}") from None


def is_routed(model: nn.Module) -> bool:
    """A DRNet with instance-aware routers (not the dense supernet, not MobileNetV2)."""
    config = getattr(model, "config", None)
    return isinstance(config, DRNetConfig) and config.dynamic


def policy_with(
    model: nn.Module, threshold: float | None = None, top_k: int | None = None, budget: float | None = None
) -> RoutingPolicy | None:
    """The model's own policy with the settings given (as the CLI flags name them) in place of its own;
    None for a static model given none. Refuses settings the model cannot take, naming them."""
    given = {"--threshold": threshold, "--top-k": top_k, "--budget": budget}
    if not isinstance(model, DRNet):
        named = [flag for flag, value in given.items() if value is not None]
        if named:
            verb = "applies" if len(named) == 1 else "apply"
            raise ValueError(f"{' and '.join(named)} {verb} to DRNets only; this is a static {type(model).__name__}")
        return None
    if budget is not None and not model.config.budgeted:
        raise ValueError("--budget applies to a DRNet with budget-conditioned routers; this one routes by threshold")
    own = model.default_policy
    return dataclasses.replace(
        own,
        threshold=own.threshold if threshold is None else threshold,
        top_k=own.top_k if top_k is None else top_k,
        budget=own.budget if budget is None else budget,
    )


def model_config(model: nn.Module) -> dict[str, Any]:
    """The model's config as plain JSON-ready data."""
    return dataclasses.asdict(model.config)
