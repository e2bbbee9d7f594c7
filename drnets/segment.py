"""Finding the garment in a photo: pure functions, numpy arrays in and out.

A phone photo of a garment has a textured, shaded or coloured background (a bed sheet, a wooden
floor, a vignette): a trim of the pixels near the background colour keeps most of the frame
there. OpenCV's GrabCut models the object and the background as colour mixtures, seeded by a
rectangle (outside it: background), and cuts along strong edges with a graph cut, so grain
and weave stay background as long as the border of the photo shows them. Light falling off
towards the corners does not: the middle of the surface is brighter than any border pixel, so
GrabCut called it object (a garment inside a bright disc). ``flatten_lighting`` first divides
the image by a smooth illumination fitted to the border ring (a quadratic in x and y of the log
brightness, which holds a vignette around an off-centre light and a gradient across the frame).

GrabCut runs on a copy shrunk to ``SEGMENT_SIZE`` px (longest side) with ``ITERATIONS``
iterations and the rectangle ``BORDER`` px in from the edge. On the generated phone-style photo
set (``drnets.photos``) the whole upload path takes about 125 ms per 1200x900 JPEG including
decoding (about 170 ms at 160 px), while 400 px was several times slower and less accurate:
finer texture gets its own mixture components and leaks into the object. Only the largest connected parts are kept (a sandal's
straps can be separate parts, a shadow fleck is small), and a mask that is tiny, covers nearly
the whole frame, or does not differ in colour from the background is reported as not found.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SEGMENT_SIZE = 128  # longest side GrabCut runs at
ITERATIONS = 3
BORDER = 4  # the GrabCut rectangle starts this many pixels in from the edge (at SEGMENT_SIZE)
MIN_SIDE = 24  # shorter side (at SEGMENT_SIZE) below which GrabCut has too little to model
KEEP_PARTS = 0.15  # connected parts at least this share of the largest one stay in the object
MIN_AREA = 0.01  # an object must cover at least this share of the frame...
MAX_AREA = 0.75  # ...and at most this share: beyond, GrabCut kept (nearly) its whole rectangle
MIN_CONTRAST = 0.8  # object's mean colour vs the background's, in units of the background's spread
MAX_TILT = 15.0  # degrees: larger minAreaRect angles are a garment's shape, not a tilted camera
MIN_TILT = 1.0  # degrees: smaller ones are not worth a resampling
LIGHT_RING = 0.06  # width of the border ring the illumination is fitted to, share of the shorter side
LIGHT_OUTLIERS = 2.5  # ring pixels further than this many robust sigmas from the fit are refitted without

NOT_FOUND = "no clear object found, the whole frame used"


@dataclass(frozen=True)
class Segmentation:
    """Where the object is in an image.

    Attributes:
        mask: bool [H, W] at the input's resolution; all True when nothing was found.
        found: whether the mask is a plausible object.
        reason: why it is not, in words ("" when found).
        angle: degrees the object is turned counter-clockwise on screen (0 when not measured).
    """

    mask: np.ndarray
    found: bool
    reason: str = ""
    angle: float = 0.0

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the mask, right and bottom exclusive."""
        return bounding_box(self.mask)


def find_object(rgb: np.ndarray) -> Segmentation:
    """uint8 [H, W, 3] (or [H, W]) image -> the garment's mask at the same resolution.

    Example:
        >>> seg = find_object(np.asarray(Image.open("shirt.jpg").convert("RGB")))
        >>> seg.found, seg.box
    """
    rgb = _three_channels(rgb)
    h, w = rgb.shape[:2]
    scale = min(1.0, SEGMENT_SIZE / max(h, w))
    small_size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if min(small_size) < MIN_SIDE:
        return _not_found((h, w), "the image is too small or too thin to separate an object")
    small = cv2.resize(rgb, small_size, interpolation=cv2.INTER_AREA) if scale < 1 else rgb
    small = flatten_lighting(small)
    small_mask = grabcut(small)
    small_mask = main_parts(small_mask)
    reason = implausible(small, small_mask)
    if reason:
        return _not_found((h, w), reason)
    mask = _upscale(small_mask, (h, w))
    return Segmentation(mask, True, "", tilt(small_mask))


def flatten_lighting(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> the same image with the illumination seen on its border divided out.

    The log brightness of a border ring is fitted by a quadratic in (x, y) (three passes, dropping
    outliers such as a garment touching the border); the fit, relative to its median on the ring,
    divides every pixel, so the surface reads about as bright in the middle as at the edges.
    """
    h, w = rgb.shape[:2]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = x / w - 0.5, y / h - 0.5
    terms = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1)
    r = max(2, round(min(h, w) * LIGHT_RING))
    ring = np.zeros((h, w), bool)
    ring[:r] = ring[-r:] = ring[:, :r] = ring[:, -r:] = True
    log_light = np.log(rgb.astype(np.float32).mean(axis=-1) + 4.0)
    a, b = terms[ring], log_light[ring]
    keep = np.ones(b.shape, bool)
    for _ in range(3):
        coef = np.linalg.lstsq(a[keep], b[keep], rcond=None)[0]
        residual = b - a @ coef
        sigma = 1.4826 * float(np.median(np.abs(residual - np.median(residual)))) + 1e-3
        keep = np.abs(residual) < LIGHT_OUTLIERS * sigma
    light = terms @ coef
    light -= np.median(light[ring])
    return np.clip(rgb.astype(np.float32) / np.exp(light)[..., None], 0, 255).astype(np.uint8)


def grabcut(rgb: np.ndarray) -> np.ndarray:
    """GrabCut seeded by a rectangle ``BORDER`` px in from the edge -> bool mask (empty on failure).

    Its colour mixtures start from k-means seeded by OpenCV's per-thread RNG, which every call
    advances: reseeded here, the same photo gets the same mask however many came before it.
    """
    h, w = rgb.shape[:2]
    cv2.setRNGSeed(0)
    labels = np.zeros((h, w), np.uint8)
    rect = (BORDER, BORDER, w - 2 * BORDER, h - 2 * BORDER)
    models = (np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64))
    try:
        cv2.grabCut(rgb, labels, rect, *models, ITERATIONS, cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # a mixture with no samples left (e.g. GrabCut gave every pixel to one side)
        return np.zeros((h, w), bool)
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def main_parts(mask: np.ndarray) -> np.ndarray:
    """The largest connected part, plus parts at least ``KEEP_PARTS`` of its size; holes filled."""
    count, parts, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros_like(mask, dtype=bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= KEEP_PARTS * areas.max()) + 1
    kept = np.isin(parts, keep)
    return fill_holes(kept)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background regions not connected to the border become object (a bag's handle loop stays open
    only if it reaches the border, which an object inside the GrabCut rectangle never does)."""
    padded = np.pad(mask, 1).astype(np.uint8)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8), (0, 0), 1)
    return (mask | (flood[1:-1, 1:-1] == 0)).astype(bool)


def implausible(rgb: np.ndarray, mask: np.ndarray) -> str:
    """Why ``mask`` is not a believable object in ``rgb``, or "" if it is."""
    share = float(mask.mean())
    if share < MIN_AREA:
        return "the object found is tiny"
    if share > MAX_AREA:
        return "the object found covers nearly the whole frame"
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    inside, outside = lab[mask.ravel()], lab[~mask.ravel()]
    spread = float(np.sqrt(outside.var(axis=0).sum())) + 1.0
    if float(np.linalg.norm(inside.mean(axis=0) - outside.mean(axis=0))) < MIN_CONTRAST * spread:
        return "the object found does not stand out from the background"
    return ""


def tilt(mask: np.ndarray) -> float:
    """Counter-clockwise tilt (degrees) of the mask's minimum-area rectangle, 0 for large angles.

    Only small tilts are believed: a hand-held phone turns the garment by a few degrees, while a
    minimum-area rectangle at 30 degrees usually describes the garment's outline (a sandal's
    diagonal strap), not the camera.
    """
    points = cv2.findNonZero(mask.astype(np.uint8))
    if points is None or len(points) < 3:
        return 0.0
    (_, _), (width, height), angle = cv2.minAreaRect(points)
    if width == 0 or height == 0:
        return 0.0
    angle = ((angle + 45.0) % 90.0) - 45.0  # the rectangle's sides repeat every 90 degrees
    return -angle if MIN_TILT <= abs(angle) <= MAX_TILT else 0.0


def straighten(image: np.ndarray, mask: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate ``image`` and ``mask`` by ``-angle`` about the mask's centre, so the object stands upright.

    The canvas grows to hold the rotated frame; uncovered pixels are background (0, mask False).
    """
    if angle == 0.0:
        return image, mask
    h, w = mask.shape
    left, top, right, bottom = bounding_box(mask)
    centre = ((left + right) / 2.0, (top + bottom) / 2.0)
    matrix = cv2.getRotationMatrix2D(centre, -angle, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w, new_h = int(np.ceil(h * sin + w * cos)), int(np.ceil(h * cos + w * sin))
    matrix[:, 2] += ((new_w - w) / 2.0, (new_h - h) / 2.0)
    rotated = cv2.warpAffine(image, matrix, (new_w, new_h), flags=cv2.INTER_LINEAR, borderValue=0)
    rotated_mask = cv2.warpAffine(mask.astype(np.uint8) * 255, matrix, (new_w, new_h), flags=cv2.INTER_LINEAR)
    return rotated, rotated_mask > 127


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the True pixels, right and bottom exclusive; the frame if none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, 0, mask.shape[1], mask.shape[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _three_channels(image: np.ndarray) -> np.ndarray:
    image = np.ascontiguousarray(image, dtype=np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image


def _upscale(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool mask -> bool mask of ``size`` (h, w), edges interpolated rather than blocky."""
    if mask.shape == size:
        return mask
    soft = cv2.resize(mask.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return soft > 0.5


def _not_found(size: tuple[int, int], reason: str) -> Segmentation:
    return Segmentation(np.ones(size, bool), False, reason)


def can_segment(shape: tuple[int, ...]) -> bool:
    """Whether an image of this (h, w) is large enough, once shrunk, for GrabCut to model."""
    h, w = shape[:2]
    return min(h, w) * min(1.0, SEGMENT_SIZE / max(h, w)) >= MIN_SIDE
