"""Uploads: a hostile corpus generated here, realistic photos, real Fashion-MNIST images, fuzzing.

Every input must give a correct answer or an ``UploadError`` with a clear message.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from drnets.checkpoint import load_checkpoint
from drnets.data import load_dataset, to_input
from drnets.upload import SUPPORTED_TEXT, PreparedImage, UploadError, prepare_upload

FASHION = (1, 28, 28)
CIFAR = ((3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def check_prepared(prepared: PreparedImage, input_size: tuple[int, int, int] = FASHION) -> None:
    """The invariants every successful upload keeps."""
    c, h, w = input_size
    assert prepared.tensor.shape == (1, c, h, w)
    assert prepared.tensor.dtype == torch.float32
    assert torch.isfinite(prepared.tensor).all()
    assert prepared.seen.dtype == np.uint8
    assert prepared.seen.shape == ((h, w) if c == 1 else (h, w, c))
    assert prepared.original.mode == "RGB" and max(prepared.original.size) <= 512
    assert all(isinstance(note, str) and note for note in prepared.notes)


def object_box(seen: np.ndarray, level: int = 40) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the bright pixels the model saw."""
    box = Image.fromarray(((seen > level) * 255).astype(np.uint8)).getbbox()
    assert box is not None, "the model saw no object"
    return box


def garment_photo(
    size: tuple[int, int] = (640, 480),
    box: tuple[int, int, int, int] = (380, 90, 600, 400),
    garment: tuple[int, int, int] = (40, 45, 90),
    background: tuple[int, int, int] = (236, 232, 226),
    noise: float = 6.0,
    seed: int = 0,
    falloff: float = 8.0,
) -> Image.Image:
    """A product-style photo: a dark dress-like trapezoid (narrow top, wide hem) on a light, noisy,
    unevenly lit background, placed off-centre."""
    rng = np.random.default_rng(seed)
    w, h = size
    light = np.linspace(-falloff, falloff, w)[None, :, None]  # light falls off across the frame
    base = np.asarray(background, dtype=np.float32)[None, None, :] + light + rng.normal(0, noise, (h, w, 3))
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    left, top, right, bottom = box
    inset = (right - left) // 4
    ImageDraw.Draw(image).polygon(
        [(left + inset, top), (right - inset, top), (right, bottom), (left, bottom)], fill=garment
    )
    return image


@pytest.fixture(scope="module")
def fashion_images() -> np.ndarray:
    """Real Fashion-MNIST test images (uint8 [N, 28, 28]), a few of every class."""
    test = load_dataset("fashion-mnist", "test")
    picks = torch.cat([torch.nonzero(test.labels == c)[:3, 0] for c in range(10)])
    return test.images[picks, ..., 0].numpy()


# ---- files that are not images ----


@pytest.mark.parametrize(
    "data, hint",
    [
        (b"", "the file is empty"),
        (b"just some notes\nrenamed to shirt.png\n", "text file"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n", "PDF"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>', "SVG"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
        (b"<!DOCTYPE html>\n<html><body><img src=x onerror=alert(1)></body></html>", "HTML"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "text"),  # EPS: Pillow would call Ghostscript
        (b"\x00\x01\x02\x03" * 64, ""),
    ],
)
def test_non_images_are_refused_with_the_supported_formats(data: bytes, hint: str) -> None:
    with pytest.raises(UploadError) as info:
        prepare_upload(data)
    message = str(info.value)
    assert message.startswith("not an image we can read")
    assert f"(supported: {SUPPORTED_TEXT})" in message
    assert hint in message


def test_formats_pillow_reads_but_we_do_not_accept_are_refused() -> None:
    """Only the listed decoders see user bytes (PPM here stands for every other Pillow plugin)."""
    with pytest.raises(UploadError, match="not an image we can read"):
        prepare_upload(encode(Image.new("L", (30, 30), 128), "PPM"))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_say_so(fmt: str) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    with pytest.raises(UploadError, match="truncated or corrupt"):
        prepare_upload(data[: len(data) // 2])


def test_png_with_a_damaged_chunk_is_refused() -> None:
    data = bytearray(encode(Image.fromarray(np.full((40, 40), 200, dtype=np.uint8))))
    idat = data.index(b"IDAT")
    data[idat + 8] ^= 0xFF  # flip bits inside the compressed pixels: the chunk CRC no longer matches
    with pytest.raises(UploadError, match="truncated or corrupt"):
        prepare_upload(bytes(data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height 8-bit gray pixels but carries almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (20_000, 20_000), (8_000, 8_000)])
def test_decompression_bombs_are_refused_before_decoding(width: int, height: int) -> None:
    """100000x100000 trips Pillow's own guard; 8000x8000 (64 MP) only ours (40 MP)."""
    with pytest.raises(UploadError, match="megapixels"):
        prepare_upload(png_header_only(width, height))


def test_a_real_zero_bomb_is_refused_by_its_declared_size() -> None:
    data = encode(Image.new("L", (3000, 3000)))  # 9 MP of zeros compress to ~10 kB
    assert len(data) < 50_000
    with pytest.raises(UploadError, match=r"3000x3000 pixels \(9 megapixels\); the limit is 5 megapixels"):
        prepare_upload(data, max_pixels=5_000_000)


def test_size_limit_is_checked_first() -> None:
    with pytest.raises(UploadError, match=r"the file is 2\.0 MB; the limit is 1 MB"):
        prepare_upload(b"\x89PNG" + bytes(2_000_000 - 4), max_bytes=1_000_000)


@pytest.mark.slow
def test_a_50_mb_file_is_refused_by_default_and_decoded_in_bounded_memory_when_allowed(tmp_path) -> None:
    """A 50 MB BMP (4096x4096 RGB noise): over the 20 MB default limit; with the limit raised it
    decodes, and peak memory stays within a few copies of the file (measured in a fresh process)."""
    noise = np.random.default_rng(2).integers(0, 256, (4096, 4096, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "BMP")
    assert len(data) > 50_000_000
    with pytest.raises(UploadError, match=r"the file is 50\.3 MB; the limit is 20 MB"):
        prepare_upload(data)
    path = tmp_path / "big.bmp"
    path.write_bytes(data)
    script = textwrap.dedent(f"""
        import re
        from drnets.upload import prepare_upload

        def status(field):  # kB, from the kernel's accounting of this process
            return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

        data = open({str(path)!r}, "rb").read()
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
        before = status("VmRSS")
        prepared = prepare_upload(data, max_bytes=60_000_000)
        print((status("VmHWM") - before) // 1024, prepared.seen.shape)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    print(f"peak memory increase: {out[0]} MB")
    assert int(out[0]) < 200, f"decoding a 50 MB image raised peak memory by {out[0]} MB"


# ---- unusual but valid images: each gives a correct answer ----


@pytest.mark.parametrize(
    "noise, falloff, how",
    [(0.0, 0.0, "inverted the light background (Fashion-MNIST items are light on black)"),
     (6.0, 8.0, "separated the object from the background (GrabCut)")],
    ids=["studio backdrop: trim", "lit, noisy surface: GrabCut"],
)  # fmt: skip
def test_garment_photo_on_light_background_is_inverted_cropped_and_centred(
    noise: float, falloff: float, how: str
) -> None:
    photo = garment_photo(noise=noise, falloff=falloff)
    prepared = prepare_upload(encode(photo, "PNG"))
    check_prepared(prepared)
    assert how in prepared.notes
    assert "cropped to the object" in prepared.notes
    seen = prepared.seen.astype(float)
    left, top, right, bottom = object_box(prepared.seen)
    # The trapezoid is 220x310: its height fills the frame, its width keeps the aspect ratio.
    assert (top, bottom) == (0, 28)
    assert abs((right - left) - 28 * 220 / 310) <= 1.5
    assert abs((left + right) / 2 - 14) <= 1.0  # centred although the photo had it on the right
    assert seen[14, 12:16].mean() > 200  # garment bright
    assert np.concatenate([seen[:, 0], seen[:, -1]]).mean() < 10  # background black
    assert prepared.original.size == (512, 384)  # the upload itself, shrunk for display


def test_light_garment_on_dark_background_is_not_inverted() -> None:
    photo = garment_photo(garment=(230, 225, 220), background=(35, 30, 30), box=(60, 40, 300, 420))
    prepared = prepare_upload(encode(photo))
    assert not any("inverted" in note for note in prepared.notes)
    left, top, right, bottom = object_box(prepared.seen)
    assert (top, bottom) == (0, 28) and abs((left + right) / 2 - 14) <= 1.0


def test_noisy_photo_is_cropped_to_the_object_not_the_noise() -> None:
    photo = garment_photo(noise=14.0, box=(250, 200, 330, 300), seed=3)  # small object, heavy sensor noise
    prepared = prepare_upload(encode(photo))
    left, top, right, bottom = object_box(prepared.seen, level=100)
    assert bottom - top >= 27 and abs((right - left) - 28 * 80 / 100) <= 2


def test_dress_shape_keeps_its_orientation() -> None:
    prepared = prepare_upload(encode(garment_photo()))
    rows = (prepared.seen > 100).sum(axis=1)
    assert rows[2:6].mean() < rows[-6:-2].mean()  # narrow shoulders at the top, wide hem at the bottom


def test_exif_rotated_jpeg_is_turned_upright() -> None:
    upright = garment_photo(size=(300, 400), box=(50, 40, 250, 360))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # how a phone held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    prepared = prepare_upload(encode(stored, "JPEG", quality=90, exif=exif))
    assert "applied EXIF rotation (orientation 6)" in prepared.notes
    assert prepared.original.size == (300, 400)  # portrait again
    rows = (prepared.seen > 100).sum(axis=1)
    assert rows[2:6].mean() < rows[-6:-2].mean()  # hem at the bottom, as in the upright photo


def test_real_fashion_mnist_images_pass_through_unchanged(fashion_images: np.ndarray) -> None:
    """A 28x28 dark-background test image is exactly what the model was trained on."""
    for image in fashion_images:
        prepared = prepare_upload(encode(Image.fromarray(image)))
        np.testing.assert_array_equal(prepared.seen, image)
        expected = to_input(torch.from_numpy(image).reshape(1, 28, 28, 1), (0.2860,), (0.3530,))
        assert torch.equal(prepared.tensor, expected)


def test_fashion_mnist_images_survive_jpeg_and_inversion(fashion_images: np.ndarray) -> None:
    """The same garments as a JPEG or as dark-on-white: what the model sees stays within JPEG noise."""
    for image in fashion_images:
        for data in (encode(Image.fromarray(image), "JPEG", quality=95), encode(Image.fromarray(255 - image))):
            diff = np.abs(prepare_upload(data).seen.astype(float) - image).mean()
            assert diff < 3, f"mean difference {diff:.1f} grey levels"


def test_fashion_mnist_images_at_4x_are_framed_as_the_original(fashion_images: np.ndarray) -> None:
    """Cropping, fitting and centring reproduce Fashion-MNIST's framing to within a pixel; the
    grey levels differ only by resampling (an object 27 px tall in the original is stretched to 28)."""
    diffs = []
    for image in fashion_images:
        big = Image.fromarray(image).resize((112, 112), Image.Resampling.NEAREST)
        seen = prepare_upload(encode(big)).seen
        assert np.abs(np.subtract(object_box(seen), object_box(image))).max() <= 1
        diffs.append(np.abs(seen.astype(float) - image).mean())
    assert np.median(diffs) < 5, diffs


SHIPPED_DRNET = Path(__file__).resolve().parents[1] / "assets" / "models" / "drnet"


@pytest.mark.skipif(not (SHIPPED_DRNET / "config.json").is_file(), reason="shipped DRNet not built yet")
def test_shipped_drnet_gives_the_same_answers_on_reframed_test_images() -> None:
    """With the real model: the same garments uploaded as PNG get identical answers, and at 4x size,
    dark-on-white, as JPEG get the same answer for at least 90 of 100 (epoch-1 weights: 94)."""
    model = load_checkpoint(SHIPPED_DRNET).model
    test = load_dataset("fashion-mnist", "test").subset(100)
    reframed = {
        "png": lambda image: encode(Image.fromarray(image)),
        "4x inverted jpeg": lambda image: encode(
            Image.fromarray(255 - image).resize((112, 112), Image.Resampling.BILINEAR), "JPEG", quality=90
        ),
    }
    with torch.inference_mode():
        reference = model(to_input(test.images, (0.2860,), (0.3530,)))[0].argmax(1)
        agreement = {}
        for name, make in reframed.items():
            batch = torch.cat([prepare_upload(make(image)).tensor for image in test.images[..., 0].numpy()])
            agreement[name] = int(
                (model(batch)[0].argmax(1) == reference).sum()
            )  # counted: 0.9 is not exact in float32
    assert agreement["png"] == 100 and agreement["4x inverted jpeg"] >= 90, agreement


def test_16_bit_png_uses_its_full_range() -> None:
    values = np.full((120, 90), 60_000, dtype=np.uint16)
    values[20:100, 25:65] = 4_000  # dark garment on a light 16-bit background
    prepared = prepare_upload(encode(Image.fromarray(values)))
    assert "scaled 16-bit values to 8 bits" in prepared.notes
    assert any("inverted" in note for note in prepared.notes)
    left, top, right, bottom = object_box(prepared.seen)
    assert (top, bottom) == (0, 28) and abs((right - left) - 14) <= 1


def test_cmyk_jpeg_matches_its_rgb_version() -> None:
    photo = garment_photo(noise=0.0)
    rgb = prepare_upload(encode(photo, "JPEG", quality=95)).seen.astype(float)
    cmyk = prepare_upload(encode(photo.convert("CMYK"), "JPEG", quality=95))
    assert np.abs(cmyk.seen - rgb).mean() < 4


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA"])
def test_transparent_background_is_composited_onto_white(mode: str) -> None:
    """Transparent pixels hide black RGB values: they must count as white paper, not black."""
    rgba = Image.new("RGBA", (100, 120), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).rectangle((30, 10, 69, 109), fill=(50, 40, 30, 255))
    options = {}
    if mode == "P":  # index 0: black but transparent, index 1: the garment's colour
        image = Image.new("P", rgba.size, 0)
        image.putpalette([0, 0, 0, 50, 40, 30])
        ImageDraw.Draw(image).rectangle((30, 10, 69, 109), fill=1)
        options["transparency"] = 0
    else:
        image = rgba.convert(mode)
    prepared = prepare_upload(encode(image, **options))
    assert "composited transparent areas onto white" in prepared.notes
    assert any("inverted" in note for note in prepared.notes)
    left, top, right, bottom = object_box(prepared.seen)
    assert (top, bottom) == (0, 28) and abs((right - left) - 11) <= 1


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_uses_the_first_frame(fmt: str) -> None:
    tall = Image.new("L", (80, 80), 255)
    ImageDraw.Draw(tall).rectangle((30, 5, 49, 74), fill=0)  # frame 1: trouser-like, tall
    wide = Image.new("L", (80, 80), 255)
    ImageDraw.Draw(wide).rectangle((5, 30, 74, 49), fill=0)  # frame 2: wide
    square = Image.new("L", (80, 80), 255)
    ImageDraw.Draw(square).rectangle((20, 20, 59, 59), fill=0)  # frame 3: square
    frames = [f.convert("RGB") for f in (tall, wide, square)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    prepared = prepare_upload(data)
    assert "used the first frame of 3" in prepared.notes
    left, top, right, bottom = object_box(prepared.seen)
    assert (top, bottom) == (0, 28) and right - left < 12


@pytest.mark.parametrize("size", [(1, 1), (10_000, 10), (10, 10_000), (2, 3)])
def test_extreme_sizes_give_an_answer(size: tuple[int, int]) -> None:
    image = Image.new("L", size, 230)
    ImageDraw.Draw(image).rectangle((size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4), fill=20)
    prepared = prepare_upload(encode(image))
    check_prepared(prepared)
    if max(size) > 10 * min(size):
        assert any("very elongated" in note for note in prepared.notes)


def test_uniform_image_says_no_object_was_found() -> None:
    prepared = prepare_upload(encode(Image.new("RGB", (64, 48), (200, 10, 10))))
    assert prepared.unsure.startswith("no clear object found, the whole frame used")
    assert prepared.unsure in prepared.notes and prepared.object_view is None
    check_prepared(prepared)


def test_three_channel_models_get_a_centre_cropped_rgb_image() -> None:
    photo = garment_photo()
    prepared = prepare_upload(encode(photo), *CIFAR)
    check_prepared(prepared, CIFAR[0])
    assert "centre-cropped and resized to 32x32" in prepared.notes
    expected = np.asarray(photo.crop((80, 0, 560, 480)).resize((32, 32), Image.Resampling.LANCZOS)).astype(float)
    assert np.abs(prepared.seen - expected).mean() < 3


def test_bad_model_metadata_is_a_plain_value_error() -> None:
    data = encode(Image.new("L", (28, 28)))
    with pytest.raises(ValueError, match="input_size must be"):
        prepare_upload(data, input_size=(4, 28, 28), mean=(0.5,) * 4, std=(0.5,) * 4)
    with pytest.raises(ValueError, match="mean/std need 1 values"):
        prepare_upload(data, mean=(0.5, 0.5, 0.5))


# ---- fuzzing ----

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def prepare_or_refuse(data: bytes, input_size: tuple[int, int, int] = FASHION) -> None:
    """The fuzzing property: a valid result or an UploadError, nothing else."""
    mean, std = ((0.5,) * input_size[0],) * 2
    try:
        prepared = prepare_upload(data, input_size, mean, std, max_pixels=4_000_000)
    except UploadError as err:
        assert str(err)
        return
    check_prepared(prepared, input_size)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_never_crash(data: bytes) -> None:
    prepare_or_refuse(data)


def _seed_files() -> list[bytes]:
    picture = Image.fromarray(np.random.default_rng(4).integers(0, 256, (24, 20, 3), dtype=np.uint8))
    return [encode(picture, fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")] + [
        encode(picture.convert("L"), "PNG"),
        encode(picture, "GIF", save_all=True, append_images=[picture.rotate(90)]),
    ]


SEED_FILES = _seed_files()


@pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")  # Pillow notes damaged TIFF tags
@FUZZ
@given(
    st.sampled_from(SEED_FILES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    st.one_of(st.none(), st.integers(0, 10_000)),
)
def test_damaged_images_never_crash(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> None:
    """Valid files with bytes overwritten and/or cut short: reaches the decoders, unlike pure noise."""
    damaged = bytearray(data)
    for position, value in flips:
        damaged[position % len(damaged)] = value
    prepare_or_refuse(bytes(damaged[:cut] if cut is not None else damaged))


FORMAT_MODES = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["L", "P", "RGB"],
    "BMP": ["1", "L", "P", "RGB", "RGBA"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F"],
    "WEBP": ["RGB", "RGBA"],
}


@st.composite
def valid_images(draw: st.DrawFn) -> bytes:
    fmt = draw(st.sampled_from(sorted(FORMAT_MODES)))
    mode = draw(st.sampled_from(FORMAT_MODES[fmt]))
    width, height = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    seed = draw(st.integers(0, 2**32 - 1))
    content = draw(st.sampled_from(["noise", "flat", "shape"]))
    rng = np.random.default_rng(seed)
    if content == "noise":
        rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    else:
        rgba = np.broadcast_to(rng.integers(0, 256, 4, dtype=np.uint8), (height, width, 4)).copy()
        if content == "shape":
            rgba[height // 4 : 3 * height // 4 + 1, width // 4 : 3 * width // 4 + 1] = rng.integers(0, 256, 4)
    image = Image.fromarray(rgba)
    if mode in ("I;16", "I", "F"):
        scale, dtype = {"I;16": (257, np.uint16), "I": (1 << 20, np.int32), "F": (0.01, np.float32)}[mode]
        image = Image.fromarray((np.asarray(image.convert("L"), dtype=np.float64) * scale).astype(dtype))
    else:
        image = image.convert(mode)
    return encode(image, fmt)


@FUZZ
@given(valid_images(), st.sampled_from([FASHION, CIFAR[0]]))
def test_random_valid_images_always_give_an_answer(data: bytes, input_size: tuple[int, int, int]) -> None:
    mean, std = ((0.5,) * input_size[0],) * 2
    check_prepared(prepare_upload(data, input_size, mean, std), input_size)
