"""How much a routed DRNet's routes differ between images, and whether they follow the class.

A dynamic network earns its routers only if images actually take different paths. These
functions answer that from the routing trace of one pass over a data set: how many distinct
routes there are and how dominant the most common one is, how many edges ever change their
branch set, how far per-image cost spreads, and how much the route tells about the class.
They are pure, vectorised functions of the ``ran`` [N, L, E, K] bool tensor, the per-image
``flops`` [N] and the ``labels`` [N]; per-class cost and the easy/hard class cost gap are
reported by the evaluation's ``per_class`` and ``difficulty`` sections, not here.
"""

from __future__ import annotations

from typing import Any

import torch

# An edge "varies" when at least this share of images choose a branch set other than the
# edge's most common one: a handful of outliers in 10,000 images is not a routing decision.
EDGE_VARY_MIN_SHARE = 0.05


def route_ids(ran: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Number the distinct routes: (route id per image [N], images per route [R]).

    A route is an image's whole ``ran`` pattern (every branch of every edge of every cell);
    two images share a route only if they ran exactly the same branches everywhere.
    """
    flat = ran.reshape(ran.shape[0], -1).to(torch.uint8)
    _, ids, counts = torch.unique(flat, dim=0, return_inverse=True, return_counts=True)
    return ids, counts


def edge_mode_shares(ran: torch.Tensor) -> torch.Tensor:
    """Share of images that choose each edge's most common branch set: [L, E], in (0, 1].

    Counts (edge, branch set) pairs with one ``unique`` over rows of [edge index, K bits],
    so the cost does not grow with the 2^K possible branch sets.
    """
    n, cells, edges, k = ran.shape
    edge_index = torch.arange(cells * edges).repeat(n).view(-1, 1)
    rows = torch.cat([edge_index, ran.reshape(-1, k).long()], dim=1)  # [N*L*E, 1+K]
    pairs, counts = torch.unique(rows, dim=0, return_counts=True)
    mode = torch.zeros(cells * edges, dtype=counts.dtype).scatter_reduce(0, pairs[:, 0], counts, reduce="amax")
    return (mode.double() / n).view(cells, edges)


def flops_spread(flops: torch.Tensor) -> dict[str, float | None]:
    """Per-image FLOPs p10/p50/p90 and p90/p10: how much dearer the dear tail is than the cheap one.

    The ratio ignores the extremes (unlike max/min), so a few odd images do not make routing
    look wide; None when p10 is 0.
    """
    p10, p50, p90 = torch.quantile(flops.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    return {"flops_p10": p10, "flops_p50": p50, "flops_p90": p90, "flops_p90_p10": p90 / p10 if p10 > 0 else None}


def entropy_bits(counts: torch.Tensor) -> float:
    """Shannon entropy (bits) of the distribution given by non-negative ``counts``."""
    p = counts.double().flatten()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


def mutual_information_bits(routes: torch.Tensor, labels: torch.Tensor) -> float:
    """I(route; class) in bits from the empirical joint distribution of (route id, label).

    I = H(route) + H(class) - H(route, class): 0 when routes ignore the class, H(class) when
    the route alone names the class. A plug-in estimate: with R routes, C classes and N
    images it is biased upwards by about (R-1)(C-1) / (2 N ln 2) bits.
    """
    _, route = torch.unique(routes, return_inverse=True)
    _, label = torch.unique(labels, return_inverse=True)
    n_labels = int(label.max()) + 1
    joint = torch.bincount(route * n_labels + label, minlength=(int(route.max()) + 1) * n_labels)
    joint = joint.view(-1, n_labels)
    mi = entropy_bits(joint.sum(1)) + entropy_bits(joint.sum(0)) - entropy_bits(joint)
    return max(mi, 0.0)  # rounding can leave -1e-16 for independent variables


def routing_stats(ran: torch.Tensor, flops: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """The ``routing`` section of eval.json: are routes per image, and do they follow the class?

    Keys: ``distinct_routes`` and ``top_route_share`` (images on the most common route);
    ``edges``, ``edges_varying`` and ``edges_varying_share`` (an edge varies when at least
    ``edge_vary_min_share`` of images leave its most common branch set); the ``flops_spread``
    keys; ``route_class_information_bits`` = I(route; class), ``class_entropy_bits`` = H(class)
    and ``route_class_information_share`` = I / H(class) (None when H(class) is 0).
    """
    if ran.shape[0] == 0:
        raise ValueError("routing statistics need at least one image")
    ran, flops, labels = ran.cpu().bool(), flops.cpu(), labels.cpu()
    ids, counts = route_ids(ran)
    varying = (1 - edge_mode_shares(ran)) >= EDGE_VARY_MIN_SHARE - 1e-12
    information = mutual_information_bits(ids, labels)
    class_entropy = entropy_bits(torch.unique(labels, return_counts=True)[1])
    return {
        "distinct_routes": len(counts),
        "top_route_share": float(counts.max()) / ran.shape[0],
        "edges": varying.numel(),
        "edges_varying": int(varying.sum()),
        "edges_varying_share": float(varying.double().mean()) if varying.numel() else 0.0,
        "edge_vary_min_share": EDGE_VARY_MIN_SHARE,
        **flops_spread(flops),
        "route_class_information_bits": information,
        "class_entropy_bits": class_entropy,
        "route_class_information_share": information / class_entropy if class_entropy > 0 else None,
    }
