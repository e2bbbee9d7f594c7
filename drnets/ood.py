"""Honest answers: is an image like anything the model was trained on, and how sure is the model?

Two things are fitted per checkpoint and stored beside it as ``calibration.json``:

- **Temperature scaling** (Guo et al. 2017): probabilities are ``softmax(logits / T)`` with one T
  fitted by minimising the negative log-likelihood on held-out images. Logits, the predicted class,
  accuracy and FLOPs do not change; only how sure the probabilities say the model is.
- **An out-of-distribution score** built from two, each scaled so that 0 is the median and 1 the
  95th percentile of held-out Fashion-MNIST images: the **energy** of the logits (Liu et al. 2020,
  ``-logsumexp(logits)``), which outlier exposure in training (``drnets train --outlier-pool``)
  drives up on things that are not garments, and the **Mahalanobis distance** (Lee et al. 2018) of
  the image's pooled late features (``pooled_features``) to the nearest class mean, under one
  covariance shared by the classes, fitted on training images (and the training photos the model
  learnt from, ``photo_pools``), which needs no such training.
  ``SUMMED`` (the default) adds the two: an image is flagged when both are raised, or one is far
  out; ``LARGER`` takes the larger, so either alone flags it; ``MAHALANOBIS`` is the distance alone.
  An image is flagged when its score exceeds the threshold that flags ``FLAG_RATE`` of the held-out
  in-distribution images. Measured on drawings, text, noise, bare surfaces, desks, screenshots and
  selfies after the upload preprocessing (``drnets ood-eval --score``, docs/MODELS.md), both fitted
  with the training photos: the sum flags as many non-garments as the larger of the two or more, and
  fewer garment photos, because a photo rarely raises both while a non-garment mostly does.

The shipped models were trained on all 60k training images, so the held-out images are the 10k
test images, split in two halves by a fixed seed: T and the threshold are fitted on the
calibration half, and every figure is reported on the other half.

A missing ``calibration.json`` means uncalibrated: T = 1 and no verdict (``in_distribution`` is
None). A file that cannot be read, or that was fitted for other weights, raises ``CalibrationError``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import WEIGHTS, Checkpoint, CheckpointError, atomic_write_text, load_checkpoint
from .model import MobileNetV2, policy_with
from .router import RoutingPolicy

CALIBRATION = "calibration.json"
FORMAT, VERSION = "drnets-calibration", 1
MAHALANOBIS, ENERGY = "mahalanobis", "energy"
LARGER, SUMMED = "mahalanobis+energy", "sum(mahalanobis,energy)"  # the two ways of combining them
SCORES = (SUMMED, LARGER, MAHALANOBIS)
FLAG_RATE = 0.03  # share of in-distribution calibration images the threshold flags
ECE_BINS = 15
SPLIT_SEED = 0
TRAIN_IMAGES = 5000  # training images the class means and the covariance are fitted on
MAX_DIMS = 96  # wider features are projected onto their top principal components first
SHRINKAGE = 1e-3  # added to the covariance's diagonal, relative to its mean variance
NOT_GARMENT = "does not look like any of the {n} classes the model knows"
# The answer in large type for such an image: short enough for a metric in a third of a laptop screen.
UNKNOWN_ANSWER = "I don't know"
UNCALIBRATED = "uncalibrated (no calibration.json): probabilities at T = 1, no out-of-distribution verdict"


class CalibrationError(CheckpointError):
    """A calibration.json that cannot be used, with a message naming the problem."""


@dataclass
class Calibration:
    """What ``calibration.json`` holds: the temperature and the out-of-distribution detector.

    Attributes:
        model: the checkpoint's model name; weights_sha256: the SHA-256 of its weights file.
        temperature: T of ``softmax(logits / T)``.
        threshold: a score above it means "not like the training data".
        center, projection: features are mapped to ``(f - center) @ projection`` ([D, k]; identity when
            None) before the distance; means [classes, k] and precision [k, k] live in that space.
        score: ``SUMMED``, ``LARGER`` or ``MAHALANOBIS`` (the distance alone).
        scales: for ``SUMMED`` and ``LARGER``, the (median, 95th percentile) of the distance and of the
            energy on the calibration images, which map each onto a common scale.
        fit: how it was fitted (images, seed, flag rate, routing threshold) and what it measured.
    """

    model: str
    weights_sha256: str
    temperature: float
    threshold: float
    means: np.ndarray
    precision: np.ndarray
    center: np.ndarray | None = None
    projection: np.ndarray | None = None
    score: str = MAHALANOBIS
    scales: dict[str, tuple[float, float]] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return calibrated_probs(logits, self.temperature)

    def ood_scores(self, features: np.ndarray | torch.Tensor, logits: torch.Tensor | None = None) -> np.ndarray:
        """The out-of-distribution score of each image; higher = less like the training data."""
        distance = self.distances(features)
        if self.score == MAHALANOBIS:
            return distance
        if logits is None:
            raise CalibrationError(f"the {self.score} score needs the logits as well as the features")
        both = self._scaled(MAHALANOBIS, distance), self._scaled(ENERGY, energy(logits))
        return np.add(*both) if self.score == SUMMED else np.maximum(*both)

    def _scaled(self, name: str, values: np.ndarray) -> np.ndarray:
        median, high = self.scales[name]
        return (values - median) / (high - median)

    def distances(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean."""
        f = np.asarray(features, dtype=np.float64)
        expected = len(self.projection) if self.projection is not None else self.means.shape[1]
        if f.ndim != 2 or f.shape[1] != expected:
            raise CalibrationError(
                f"the calibration expects {expected} feature dimensions, the model gives {f.shape[-1]}; "
                "run `drnets calibrate` again"
            )
        if self.projection is not None:
            f = (f - self.center) @ self.projection
        diff = f[:, None, :] - self.means[None]
        return np.einsum("nci,ij,ncj->nc", diff, self.precision, diff).min(axis=1)

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) <= self.threshold

    def to_json(self) -> str:
        arrays = {
            "means": self.means,
            "precision": self.precision,
            "center": self.center,
            "projection": self.projection,
        }
        data = {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "weights_sha256": self.weights_sha256,
            "temperature": self.temperature,
            "score": self.score,
            "threshold": self.threshold,
            "scales": {name: list(pair) for name, pair in self.scales.items()},
            "fit": self.fit,
            **{k: None if v is None else _rounded(v) for k, v in arrays.items()},
        }
        # one line per field: the numbers people read stay readable, the arrays stay compact
        return "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in data.items()) + "\n}\n"


def _rounded(array: np.ndarray) -> list:
    """Nested lists of the values to 7 significant digits (float32 precision)."""
    return np.vectorize(lambda v: float(f"{v:.7g}"), otypes=[object])(array).tolist()


# ---- the numbers ----


def calibrated_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return (logits.detach().float() / temperature).softmax(dim=-1)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(nn.functional.cross_entropy(logits.float() / temperature, labels))


def energy(logits: torch.Tensor) -> np.ndarray:
    """``-logsumexp(logits)`` per image: low where one class stands out, high where none does."""
    return (-torch.logsumexp(torch.as_tensor(logits).detach().float(), dim=1)).double().numpy()


def score_scale(values: np.ndarray) -> tuple[float, float]:
    """(median, 95th percentile): where a score of in-distribution images sits and how far it spreads."""
    median, high = np.quantile(np.asarray(values, dtype=np.float64), [0.5, 0.95])
    return float(median), float(max(high, median + 1e-9))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, low: float = 0.05, high: float = 20.0) -> float:
    """The T minimising the NLL of ``softmax(logits / T)``: a golden-section search on log T (NLL is
    convex in 1/T, so unimodal on this interval)."""
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, labels, math.exp(c)), nll(logits, labels, math.exp(d))
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, labels, math.exp(d))
    return math.exp((a + b) / 2)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error: |accuracy - confidence| per equal-width confidence bin, weighted by its share."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            total += float(inside.float().mean() * (confidence[inside].mean() - correct[inside].mean()).abs())
    return total


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """P(an out-of-distribution score > an in-distribution one), ties counted half."""
    inside = np.sort(np.asarray(in_scores, dtype=np.float64))
    out = np.asarray(out_scores, dtype=np.float64)
    below = np.searchsorted(inside, out, side="left")
    at_or_below = np.searchsorted(inside, out, side="right")
    return float((below + at_or_below).sum() / (2 * len(inside) * len(out)))


def threshold_for(scores: np.ndarray, flag_rate: float = FLAG_RATE) -> float:
    """The score above which ``flag_rate`` of these (in-distribution) scores lie."""
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1 - flag_rate))


def split_halves(n: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, held-out) indices: a fixed seeded permutation of range(n), cut in two."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def fit_gaussian(
    features: np.ndarray, labels: np.ndarray, classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(means, precision, center, projection): class means and the shared covariance's inverse,
    after projecting features wider than ``MAX_DIMS`` onto their top principal components."""
    f = np.asarray(features, dtype=np.float64)
    center = projection = None
    if f.shape[1] > MAX_DIMS:
        center = f.mean(axis=0)
        _, _, vt = np.linalg.svd(f - center, full_matrices=False)
        projection = vt[:MAX_DIMS].T
        f = (f - center) @ projection
    missing = [c for c in range(classes) if not (labels == c).any()]
    if missing:
        raise ValueError(f"no training images of classes {missing} to fit their means on")
    means = np.stack([f[labels == c].mean(axis=0) for c in range(classes)])
    centred = f - means[labels]
    cov = centred.T @ centred / len(f)
    cov += SHRINKAGE * np.trace(cov) / len(cov) * np.eye(len(cov))
    return means, np.linalg.inv(cov), center, projection


# ---- running a model ----


def pooled_features(model: nn.Module, x: torch.Tensor, policy: RoutingPolicy | None = None) -> torch.Tensor:
    """The globally pooled features [B, D] the detector reads, from a plain model.

    A DRNet (and the dense supernet): the last cell's output, what the classifier reads. MobileNetV2:
    the last inverted-residual block's output (320 channels), before the final 1x1 expansion to 1280;
    measured on the non-garment set it separates them better (AUROC 0.97 against 0.92, docs/MODELS.md).
    """
    if not hasattr(model, "forward_features"):
        raise ValueError(f"{type(model).__name__} has no forward_features: no out-of-distribution score for it")
    with torch.inference_mode():
        if isinstance(model, MobileNetV2):
            model.check_input(x)
            maps = model.features[:-1](x)
        else:
            maps = model.forward_features(x, policy)[0]
        return model.global_pool(maps).flatten(1).float().cpu()


def logits_and_features(
    model: nn.Module, images: torch.Tensor, policy: RoutingPolicy | None = None, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, classes] and detector features [N, D] of normalised images, in batches."""
    device = next(model.parameters()).device
    logits, feats = [], []
    for x in images.split(batch):
        with torch.inference_mode():
            logits.append(model(x.to(device), policy)[0].float().cpu())
        feats.append(pooled_features(model, x.to(device), policy))
    return torch.cat(logits), torch.cat(feats)


def weights_digest(checkpoint: Checkpoint) -> str:
    if checkpoint.path is None:
        raise CalibrationError("the checkpoint has no folder, so its calibration cannot be tied to its weights")
    digest = hashlib.sha256()
    with open(Path(checkpoint.path) / WEIGHTS, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def calibrate(
    checkpoint: Checkpoint,
    data_root: str | None = None,
    train_images: int = TRAIN_IMAGES,
    seed: int = SPLIT_SEED,
    flag_rate: float = FLAG_RATE,
    score: str = SUMMED,
    photo_pools: tuple[str, ...] = (),
) -> Calibration:
    """Fit T and the detector on Fashion-MNIST (the shipped models' data) at the model's own routing policy.

    ``photo_pools``: folders of training photos (``drnets photos --split train``) the model was trained
    on; their features join the training images' in the class means and covariance, so that a garment
    photographed the way the model learnt does not count as far from its class.
    """
    from .data import load_dataset, to_input
    from .photo_pool import prepared_pool
    from .predict import preprocessing

    input_size, mean, std = preprocessing(checkpoint)
    policy = policy_with(checkpoint.model)
    train = load_dataset("fashion-mnist", "train", data_root)
    picked = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(len(train.labels), train_images, False)))
    images, labels = train.images[picked], train.labels[picked]
    if photo_pools:
        pool = prepared_pool(list(photo_pools), input_size, checkpoint.class_names)
        images, labels = torch.cat([images, pool.images]), torch.cat([labels, pool.labels])
    _, train_feats = logits_and_features(checkpoint.model, to_input(images, mean, std), policy)
    means, precision, center, projection = fit_gaussian(
        train_feats.numpy(), labels.numpy(), len(checkpoint.class_names)
    )
    test = load_dataset("fashion-mnist", "test", data_root)
    logits, feats = logits_and_features(checkpoint.model, to_input(test.images, mean, std), policy)
    cal, held = split_halves(len(test.labels), seed)
    temperature = fit_temperature(logits[cal], test.labels[cal])
    result = Calibration(
        checkpoint.name, weights_digest(checkpoint), temperature, 0.0, means, precision, center, projection, score
    )
    if score != MAHALANOBIS:
        result.scales = {
            MAHALANOBIS: score_scale(result.distances(feats[cal].numpy())),
            ENERGY: score_scale(energy(logits[cal])),
        }
    scores = result.ood_scores(feats.numpy(), logits)
    result.threshold = threshold_for(scores[cal], flag_rate)
    labels = test.labels[held]
    result.fit = {
        "data": "fashion-mnist",
        "train_images": train_images,
        "photo_pools": [str(folder) for folder in photo_pools],
        "pool_images": len(images) - train_images,
        "calibration_images": len(cal),
        "held_out_images": len(held),
        "seed": seed,
        "flag_rate": flag_rate,
        "routing_threshold": None if policy is None else policy.threshold,
        "feature_dims": int(train_feats.shape[1]),
        "held_out": {
            "ece_before": expected_calibration_error(calibrated_probs(logits[held]), labels),
            "ece_after": expected_calibration_error(calibrated_probs(logits[held], temperature), labels),
            "nll_before": nll(logits[held], labels),
            "nll_after": nll(logits[held], labels, temperature),
            "flagged": float(np.mean(scores[held] > result.threshold)),
        },
    }
    return result


# ---- the file ----


def save_calibration(calibration: Calibration, folder: str | Path) -> Path:
    path = Path(folder) / CALIBRATION
    atomic_write_text(path, calibration.to_json())
    return path


def load_calibration(checkpoint: Checkpoint, verify_weights: bool = True) -> Calibration | None:
    """The checkpoint's calibration, or None when it has no calibration.json (uncalibrated).

    Raises:
        CalibrationError: the file is not valid JSON, lacks a field, has arrays of the wrong shape,
            or was fitted for another model or other weights.
    """
    if checkpoint.path is None:
        return None
    path = Path(checkpoint.path) / CALIBRATION
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise CalibrationError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise CalibrationError(
            f'{path} is not a drnets calibration file (expected "format": "{FORMAT}", version {VERSION})'
        )
    try:
        calibration = _from_dict(data)
    except (KeyError, TypeError, ValueError) as err:
        raise CalibrationError(
            f"{path}: a field is missing or malformed ({err}); run `drnets calibrate` again"
        ) from None
    if calibration.model != checkpoint.name:
        raise CalibrationError(
            f"{path} was fitted for a {calibration.model!r} model, this checkpoint is {checkpoint.name!r}"
        )
    if len(calibration.means) != len(checkpoint.class_names):
        raise CalibrationError(
            f"{path} has {len(calibration.means)} class means for {len(checkpoint.class_names)} classes"
        )
    if verify_weights and calibration.weights_sha256 != weights_digest(checkpoint):
        raise CalibrationError(
            f"{path} was fitted for other weights than {WEIGHTS} in that folder; "
            f"run `drnets calibrate --checkpoint {checkpoint.path}` again"
        )
    return calibration


def _from_dict(data: dict[str, Any]) -> Calibration:
    def array(name: str, dims: int) -> np.ndarray | None:
        value = data.get(name)
        if value is None:
            return None
        out = np.asarray(value, dtype=np.float64)
        if out.ndim != dims or not np.isfinite(out).all():
            raise ValueError(f"{name} must be a finite {dims}-D array")
        return out

    means, precision = array("means", 2), array("precision", 2)
    center, projection = array("center", 1), array("projection", 2)
    if means is None or precision is None:
        raise ValueError("means and precision are required")
    k = means.shape[1]
    if precision.shape != (k, k) or (projection is not None and (projection.shape[1] != k or center is None)):
        raise ValueError("means, precision and projection do not fit together")
    if center is not None and (projection is None or center.shape[0] != projection.shape[0]):
        raise ValueError("center and projection do not fit together")
    temperature, threshold = float(data["temperature"]), float(data["threshold"])
    if not (math.isfinite(temperature) and temperature > 0 and math.isfinite(threshold)):
        raise ValueError("temperature must be positive and the threshold finite")
    score = data.get("score")
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}")
    scales = {}
    if score != MAHALANOBIS:
        scales = {name: tuple(float(v) for v in data["scales"][name]) for name in (MAHALANOBIS, ENERGY)}
        if any(len(pair) != 2 or not pair[1] > pair[0] for pair in scales.values()):
            raise ValueError("scales must be (median, 95th percentile) pairs, the second above the first")
    return Calibration(
        str(data["model"]), str(data["weights_sha256"]), temperature, threshold,
        means, precision, center, projection, score, scales, dict(data.get("fit") or {}),
    )  # fmt: skip


# ---- one answer ----


def judge(
    calibration: Calibration | None, logits: torch.Tensor, features: torch.Tensor | None
) -> tuple[torch.Tensor, np.ndarray | None, np.ndarray | None]:
    """(calibrated probabilities [B, classes], ood scores [B] or None, in-distribution flags [B] or None)."""
    if calibration is None:
        return calibrated_probs(logits), None, None
    scores = calibration.ood_scores(features.numpy() if isinstance(features, torch.Tensor) else features, logits)
    return calibration.probabilities(logits), scores, calibration.in_distribution(scores)


# ---- command line ----


def cmd_calibrate(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint)
    torch.manual_seed(0)
    calibration = calibrate(
        checkpoint, args.data_root, args.train_images, args.seed, args.flag_rate, args.score, tuple(args.photo_pool)
    )
    path = save_calibration(calibration, checkpoint.path)
    held = calibration.fit["held_out"]
    print(
        f"{path}: T = {calibration.temperature:.3f}; threshold {calibration.threshold:.2f} "
        f"({calibration.score} score, flags {held['flagged']:.1%} of the held-out half); "
        f"ECE {held['ece_before']:.4f} -> {held['ece_after']:.4f}, NLL {held['nll_before']:.4f} -> {held['nll_after']:.4f}"
    )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit temperature scaling and the out-of-distribution threshold; write calibration.json",
        description="Fit T on half of the Fashion-MNIST test set (fixed seed), the class means and covariance "
        "on training images (and training photos, --photo-pool), and the threshold that flags --flag-rate of that half; report on the other half.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder; calibration.json is written there")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: the Debian files)")
    p.add_argument("--train-images", type=int, default=TRAIN_IMAGES, help="training images for the class means")
    p.add_argument("--photo-pool", action="append", default=[], metavar="FOLDER",
                   help="training photos (`drnets photos --split train`) whose features join the class means; repeatable")  # fmt: skip
    p.add_argument("--seed", type=int, default=SPLIT_SEED, help="seed of the test split and the training sample")
    p.add_argument("--flag-rate", type=float, default=FLAG_RATE, help="share of in-distribution images flagged")
    p.add_argument("--score", choices=SCORES, default=SUMMED,
                   help="out-of-distribution score: the sum of the scaled distance and energy (default), "
                   "the larger of the two, or the distance alone")  # fmt: skip
    p.set_defaults(func=cmd_calibrate)
