"""Uploaded image bytes -> the input a model expects, or a clear ``UploadError``.

People upload anything: photos of a shirt on a bed, screenshots, 16-bit scans, animated
GIFs, PDFs, truncated files, decompression bombs. Everything is decoded in memory
(nothing touches the disk), size-checked before decoding, shrunk early, and turned into
the form the model was trained on.

For one-channel models (Fashion-MNIST) a photo is brought into Fashion-MNIST form by the
steps Zalando used to make the data set (github.com/zalandoresearch/fashion-mnist, "How to
generate"): trim the background (pixels within 5% of the background colour), fit the
longest side to the frame, centre, and negate, so the object is light on black. That trim
needs a uniform background; when the photo's border varies (texture, shading, a vignette)
the object is found with GrabCut instead (``drnets.segment``), straightened if slightly
tilted, and negated with its own darkest and lightest pixels stretched to 255 and 0 (a
garment's colour and the room's light say nothing about its class). When no plausible
object is found the whole frame is used and ``PreparedImage.unsure`` says so. Three-
channel models (CIFAR-style, full-frame photos) get a centre crop and a resize.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageOps, UnidentifiedImageError

from . import segment as seg
from .data import to_input

SUPPORTED = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # decoders we let near user bytes
SUPPORTED_TEXT = "PNG, JPEG, WebP, GIF, BMP, TIFF"
WORK_SIZE = 1024  # longest side while cropping: keeps memory small, keeps small objects > 28 px
DISPLAY_SIZE = 512  # longest side of the thumbnail shown back to the user
TRIM_TOLERANCE = 0.05 * 255  # Zalando's trim: "within 5% of the maximum possible intensity"
NOISE_SIGMAS = 3.0  # a pixel belongs to the object if it differs from the background by more
UNIFORM_SPREAD = TRIM_TOLERANCE  # border's 5th percentile this close to its median...
CLEAN_NOISE = 1.5  # ...and its noise (grey levels) this low: a studio backdrop or a drawing, where the trim works
SPECKLE_NOISE = 1.0  # above this background noise (grey levels), drop isolated pixels before cropping
BACKGROUND_DIM = 0.35  # the object view shows the background at this brightness
BOX_COLOUR = (255, 140, 0)
ELONGATED = 10  # aspect ratios beyond this get a note: the object ends up a few pixels thin
# Of a segmented object's pixels, the 1st percentile goes to 255 and the 99th to 0 (one glint must not
# dim the rest); an object spanning fewer than MIN_STRETCH_SPAN grey levels is not stretched further,
# its median (the 50th) goes to mid-grey.
STRETCH_PERCENTILES = (1, 50, 99)
MIN_STRETCH_SPAN = 48.0
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
EXIF_ORIENTATION = 0x0112
# Leading bytes of common non-images, to say what a refused file looks like.
NON_IMAGES = (
    (b"%PDF", "a PDF document"), (b"<svg", "an SVG drawing"), (b"<?xml", "an XML/SVG document"),
    (b"<!doctype html", "an HTML page"), (b"<html", "an HTML page"), (b"pk\x03\x04", "a ZIP archive"),
)  # fmt: skip
IMAGE_SIGNATURES = (
    (b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)  # fmt: skip


class UploadError(ValueError):
    """An upload we cannot use; the message is meant for the person who uploaded it."""


@dataclass
class PreparedImage:
    """What the model gets, what it saw, and what was done to get there.

    Attributes:
        tensor: float [1, C, H, W], normalised with the training mean/std.
        seen: uint8 [H, W] (grayscale) or [H, W, 3]: exactly what the model saw, before normalisation.
        original: small upright RGB thumbnail (longest side <= 512) of the upload, for display.
        notes: what was done, in words, e.g. "inverted the light background".
        object_view: the thumbnail with what was taken as the object: background dimmed where a
            mask was found, the crop outlined; None when the image was used whole or as is.
        unsure: why the object could not be told from the background ("" when it could).
    """

    tensor: torch.Tensor
    seen: np.ndarray
    original: Image.Image
    notes: list[str] = field(default_factory=list)
    object_view: Image.Image | None = None
    unsure: str = ""


@dataclass
class Framing:
    """The result of ``fashion_form``: what the model sees, and where it came from in the photo.

    Attributes:
        seen: uint8 ``size`` image in Fashion-MNIST form.
        box: (left, top, right, bottom) of the crop in the input, or None if the input was used whole.
        mask: bool [h, w] object mask in the input, or None if no mask was computed.
        unsure: why no object was found ("" when one was).
    """

    seen: np.ndarray
    box: tuple[int, int, int, int] | None = None
    mask: np.ndarray | None = None
    unsure: str = ""


def prepare_upload(
    data: bytes,
    input_size: tuple[int, int, int] = (1, 28, 28),
    mean: tuple[float, ...] = (0.2860,),
    std: tuple[float, ...] = (0.3530,),
    max_bytes: int = 20_000_000,
    max_pixels: int = 40_000_000,
    segment: bool = True,
) -> PreparedImage:
    """Decode uploaded bytes and bring them into the model's input form.

    Args:
        data: the uploaded file's bytes.
        input_size: [C, H, W] the model was trained on (C is 1 or 3).
        mean, std: per-channel normalisation of the training data.
        max_bytes: larger files are refused before decoding.
        max_pixels: images declaring more pixels are refused before decoding (decompression bombs).
        segment: find the object with GrabCut when the background is not uniform; False keeps the
            plain trim for every image (``drnets.photos`` measures both).

    Returns:
        A ``PreparedImage``.

    Raises:
        UploadError: the file is empty, too large, not a supported image, truncated or corrupt.

    Example:
        >>> prepared = prepare_upload(open("shirt.jpg", "rb").read())
        >>> logits, trace = model(prepared.tensor)
    """
    channels, height, width = _check_input_size(input_size, mean, std)
    notes: list[str] = []
    image = _decode(data, max_bytes, max_pixels, notes)
    original = image.convert("RGB")
    original.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE))
    view, unsure = None, ""
    if channels == 1:
        colour = np.asarray(image) if image.mode == "RGB" else None
        framing = fashion_form(np.asarray(image.convert("L")), (height, width), notes, colour, segment)
        seen, unsure = framing.seen, framing.unsure
        view = object_view(original, framing, image.size)
    else:
        seen = np.asarray(ImageOps.fit(image.convert("RGB"), (width, height), Image.Resampling.LANCZOS))
        notes.append(f"centre-cropped and resized to {width}x{height}")
    batch = torch.from_numpy(seen.copy()).reshape(1, height, width, channels)
    return PreparedImage(to_input(batch, tuple(mean), tuple(std)), seen, original, notes, view, unsure)


def object_view(thumbnail: Image.Image, framing: Framing, size: tuple[int, int]) -> Image.Image | None:
    """The RGB ``thumbnail`` of a ``size`` (w, h) image with the object's mask (background dimmed)
    and the crop outlined, for display; drawn at thumbnail size, so it costs little."""
    if framing.box is None:
        return None
    scale = thumbnail.width / size[0]
    rgb = np.asarray(thumbnail)
    if framing.mask is not None:
        mask = Image.fromarray(framing.mask).resize(thumbnail.size, Image.Resampling.NEAREST)
        rgb = (rgb * np.where(np.asarray(mask)[..., None], 1.0, BACKGROUND_DIM)).astype(np.uint8)
    view = Image.fromarray(rgb)
    left, top, right, bottom = (round(v * scale) for v in framing.box)
    width = max(1, round(max(view.size) / 200))
    ImageDraw.Draw(view).rectangle(
        (left, top, max(left, right - 1), max(top, bottom - 1)), outline=BOX_COLOUR, width=width
    )
    return view


def check_size(n_bytes: int, max_bytes: int) -> None:
    """Refuse a file by its size alone, before reading or decoding it."""
    if n_bytes == 0:
        raise UploadError(_unreadable("the file is empty"))
    if n_bytes > max_bytes:
        raise UploadError(f"the file is {n_bytes / 1e6:.1f} MB; the limit is {max_bytes / 1e6:g} MB")


def _check_input_size(
    input_size: tuple[int, int, int], mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[int, int, int]:
    """The caller's model metadata, not the upload, is wrong here: a plain ValueError."""
    channels, height, width = (int(v) for v in input_size)
    if channels not in (1, 3) or height < 1 or width < 1:
        raise ValueError(f"input_size must be [1 or 3, H, W], got {list(input_size)}")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std need {channels} values each, got {list(mean)} and {list(std)}")
    return channels, height, width


# ---- decoding: bytes -> upright 8-bit L or RGB image, longest side <= WORK_SIZE ----


def _decode(data: bytes, max_bytes: int, max_pixels: int, notes: list[str]) -> Image.Image:
    check_size(len(data), max_bytes)
    # Pillow's verify() checks PNG chunk CRCs and structure without decoding pixels, and
    # leaves the image unusable, so the file is opened a second time to decode it.
    with _refuse_bad_data(max_pixels):
        _open(data, max_pixels).verify()
        image = _open(data, max_pixels)
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            image.seek(0)
            notes.append(f"used the first frame of {frames}")
        if image.format == "JPEG":
            image.draft(None, (WORK_SIZE, WORK_SIZE))  # libjpeg decodes at 1/2, 1/4 or 1/8 scale: less memory
        image.load()
    aspect = max(image.size) / min(image.size)
    if aspect > ELONGATED:
        notes.append(f"the image is very elongated ({aspect:.0f}:1); the object ends up a few pixels thin")
    _apply_exif_rotation(image, notes)
    return _to_8bit(image, notes)


@contextmanager
def _refuse_bad_data(max_pixels: int) -> Iterator[None]:
    """Turn whatever Pillow raises on hostile bytes into an ``UploadError``."""
    try:
        yield
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(
            f"the image declares far more pixels than the limit of {max_pixels / 1e6:g} megapixels "
            "(a possible decompression bomb); refused without decoding it"
        ) from None
    except Exception as err:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, EOFError, ... on bad data
        raise UploadError(f"the file is truncated or corrupt ({err})") from None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header only, and refuse unsupported formats and oversized images."""
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED)
    except UnidentifiedImageError:
        raise UploadError(_unreadable(_looks_like(data))) from None
    width, height = image.size
    if width * height > max_pixels:
        raise UploadError(
            f"the image declares {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); "
            f"the limit is {max_pixels / 1e6:g} megapixels"
        )
    if width < 1 or height < 1:
        raise UploadError(f"the file is truncated or corrupt (it declares {width}x{height} pixels)")
    return image


def _looks_like(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    for signature, name in NON_IMAGES:
        if head.startswith(signature.lower()):
            return f"it looks like {name}"
    if head and not any(byte < 9 or 13 < byte < 32 for byte in head):  # checked first: "BMW..." is text
        return "it looks like a text file"
    for signature, name in IMAGE_SIGNATURES:
        if data.startswith(signature):
            return f"it starts like a {name} file but is truncated or corrupt"
    return ""


def _unreadable(reason: str) -> str:
    return f"not an image we can read{': ' + reason if reason else ''} (supported: {SUPPORTED_TEXT})"


def _apply_exif_rotation(image: Image.Image, notes: list[str]) -> None:
    """Phones store photos sideways plus an EXIF orientation tag; turn the pixels upright."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        if orientation in range(2, 9):
            ImageOps.exif_transpose(image, in_place=True)
            notes.append(f"applied EXIF rotation (orientation {orientation})")
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not cost the user their upload
        notes.append("ignored unreadable EXIF data")


def _to_8bit(image: Image.Image, notes: list[str]) -> Image.Image:
    """Any Pillow mode -> 8-bit L or RGB, transparency composited onto white, shrunk to WORK_SIZE."""
    if image.mode in HIGH_BIT_MODES:
        return _high_bit_to_l(image, notes)
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
        notes.append("composited transparent areas onto white")
    elif image.mode not in ("L", "RGB"):
        try:
            image = image.convert("L" if image.mode == "1" else "RGB")
        except ValueError:
            raise UploadError(
                f"images in colour mode {image.mode} are not supported; save it as RGB or grayscale"
            ) from None
    image.thumbnail((WORK_SIZE, WORK_SIZE))
    return image


def _high_bit_to_l(image: Image.Image, notes: list[str]) -> Image.Image:
    """16-bit images keep their absolute scale (/257); 32-bit int/float ones are stretched min..max."""
    sixteen = image.mode.startswith("I;16")
    image = image.convert("I") if sixteen else image  # Pillow cannot resize I;16
    image.thumbnail((WORK_SIZE, WORK_SIZE))
    values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if sixteen:
        values = values / 257.0
        notes.append("scaled 16-bit values to 8 bits")
    else:
        low, high = float(values.min()), float(values.max())
        values = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        notes.append(f"stretched {image.mode} values {low:g}..{high:g} to 0..255")
    return Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8))


# ---- Fashion-MNIST form: light object on black, cropped, longest side filling the frame ----


def fashion_form(
    gray: np.ndarray,
    size: tuple[int, int],
    notes: list[str],
    colour: np.ndarray | None = None,
    segment: bool = True,
) -> Framing:
    """uint8 [h, w] photo -> uint8 ``size`` image in Fashion-MNIST form, and where it came from.

    An image that is already ``size`` on a black (or, inverted, white) background is used as
    is. On a clean, uniform background (a studio backdrop, a drawing, a scan) a light background
    is inverted and the object is the region that differs from it by more than 5% or 3 noise
    sigmas; it is cropped, the background level is mapped to 0, and the crop is fitted and
    centred. On any other background (a surface with texture, noise and uneven light; with
    ``segment``) the object is found by GrabCut in ``colour`` (uint8 [h, w, 3], or ``gray``
    when None) and negated within its mask.
    """
    photo = gray
    background, noise = _background(gray)
    inverted = background > 127
    if inverted:
        gray, background = 255 - gray, 255 - background
    note = "inverted the light background (Fashion-MNIST items are light on black)"
    if gray.shape == size and background <= TRIM_TOLERANCE:
        notes.extend([note] * inverted + [f"already {size[1]}x{size[0]} on a dark background: used as is"])
        return Framing(gray.copy())
    clean = _border_spread(gray) <= UNIFORM_SPREAD and noise <= CLEAN_NOISE
    found = None
    if segment and not clean and seg.can_segment(gray.shape):
        found = seg.find_object(colour if colour is not None else photo)
        if found.found:
            return _segmented(photo, size, notes, found)
    notes.extend([note] * inverted)
    if found is not None:
        return _whole_frame(gray, size, notes, background, f"{seg.NOT_FOUND} ({found.reason})")
    box = _object_box(gray, background, noise)
    if box is None:
        return _whole_frame(gray, size, notes, background, f"{seg.NOT_FOUND} (nothing stood out)")
    notes.append("cropped to the object")
    return Framing(_fit_crop(gray, box, background, size, notes), box)


def _fit_crop(
    gray: np.ndarray, box: tuple[int, int, int, int], background: float, size: tuple[int, int], notes: list[str]
) -> np.ndarray:
    """Background level -> 0, brightest object pixel -> 255, longest side fitted to the frame."""
    left, top, right, bottom = box
    crop = np.clip(gray[top:bottom, left:right].astype(np.float32) - background, 0, None)
    peak = float(crop.max())
    if background > 0 and peak > TRIM_TOLERANCE:
        crop *= 255.0 / peak
    if crop.shape[0] < size[0] and crop.shape[1] < size[1]:
        notes.append(f"upscaled a {crop.shape[1]}x{crop.shape[0]} region")
    return _fit(crop, size)


def _whole_frame(gray: np.ndarray, size: tuple[int, int], notes: list[str], background: float, unsure: str) -> Framing:
    notes.append(unsure)
    return Framing(_fit_crop(gray, (0, 0, gray.shape[1], gray.shape[0]), background, size, notes), unsure=unsure)


def _segmented(photo: np.ndarray, size: tuple[int, int], notes: list[str], found: seg.Segmentation) -> Framing:
    """The object of ``photo`` (as taken, not inverted) negated and stretched to 0..255 within its
    mask, zero outside, cropped and fitted.

    Fashion-MNIST items are negated product photos, so a garment's dark parts are its bright ones
    there. The stretch uses the object's own pixels, not the background: a white shirt on a white
    sheet and a black one on a dark floor both keep their folds and prints.
    """
    mask = found.mask
    dark, middle, light = np.percentile(photo[mask], STRETCH_PERCENTILES) if mask.any() else (0.0, 128.0, 255.0)
    top = max(light, middle + MIN_STRETCH_SPAN / 2)  # a plain garment is mid-grey, not its noise stretched
    values = np.clip((top - photo.astype(np.float32)) / max(light - dark, MIN_STRETCH_SPAN), 0, 1) * 255 * mask
    notes.append("separated the object from the background (GrabCut)")
    notes.append("negated the object, its darkest pixels white and its lightest black (Fashion-MNIST form)")
    if found.angle:
        values, mask = seg.straighten(values, mask, found.angle)
        notes.append(f"straightened a {abs(found.angle):.0f}° tilt")
    left, top, right, bottom = seg.bounding_box(mask)
    notes.append("cropped to the object")
    return Framing(_fit(values[top:bottom, left:right], size), found.box, found.mask)


def _border_spread(gray: np.ndarray) -> float:
    """How far the border's 5th percentile lies below its median (the object light, the background
    dark by now): small for paper or a studio backdrop, also when the object touches the border."""
    low, median = np.percentile(_ring(gray), (5, 50))
    return float(median - low)


def _ring(gray: np.ndarray) -> np.ndarray:
    """The pixels of a border ring 2% of the shorter side wide, as float32."""
    h, w = gray.shape
    r = max(1, round(min(h, w) * 0.02))
    ring = np.concatenate([gray[:r].ravel(), gray[-r:].ravel(), gray[:, :r].ravel(), gray[:, -r:].ravel()])
    return ring.astype(np.float32)


def _background(gray: np.ndarray) -> tuple[float, float]:
    """Median of the border ring, and its noise (1.4826 x MAD estimates a Gaussian sigma)."""
    ring = _ring(gray)
    median = float(np.median(ring))
    return median, 1.4826 * float(np.median(np.abs(ring - median)))


def _object_box(gray: np.ndarray, background: float, noise: float) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the pixels that stand out from the background, or None."""
    threshold = max(TRIM_TOLERANCE, NOISE_SIGMAS * noise)
    mask = Image.fromarray(((np.abs(gray.astype(np.float32) - background) > threshold) * 255).astype(np.uint8))
    if noise > SPECKLE_NOISE and min(gray.shape) >= 3:
        mask = mask.filter(ImageFilter.MedianFilter(3))  # isolated noisy pixels must not stretch the box
    return mask.getbbox()


def _fit(crop: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale so the longest side fills the frame (as in Fashion-MNIST, no margin), centre on black."""
    height, width = size
    h, w = crop.shape
    scale = min(height / h, width / w)
    new_w, new_h = min(width, max(1, round(w * scale))), min(height, max(1, round(h * scale)))
    resized = np.asarray(Image.fromarray(crop).resize((new_w, new_h), Image.Resampling.LANCZOS))
    out = np.zeros(size, dtype=np.uint8)
    # Odd margins put the extra pixel before the object, as Fashion-MNIST does (checked on its test set).
    top, left = (height - new_h + 1) // 2, (width - new_w + 1) // 2
    out[top : top + new_h, left : left + new_w] = np.clip(resized, 0, 255).round().astype(np.uint8)
    return out
