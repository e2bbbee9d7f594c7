"""Data sets without torchvision: Fashion-MNIST idx files, CIFAR python batches, image folders.

Every reader returns an ``ImageSet``: uint8 images [N, H, W, C], int64 labels and class
names. Augmentation and normalisation are small tensor functions applied per batch.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
# Per-channel mean/std of the training split (computed once with `drnets data-stats`-style code, rounded).
NORMALIZATION = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
DATASETS = ("fashion-mnist", "cifar10", "cifar100", "folder")
DATASET_TITLES = {
    "fashion-mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "folder": "an image folder",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DataError(ValueError):
    """A data folder that is missing or not in the expected format."""


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 [N, H, W, C]
    labels: torch.Tensor  # int64 [N]
    class_names: list[str]
    name: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, limit: int | None) -> ImageSet:
        if limit is None or limit >= len(self):
            return self
        return ImageSet(self.images[:limit], self.labels[:limit], self.class_names, self.name)


# ---- Fashion-MNIST: idx files (http://yann.lecun.com/exdb/mnist/ format), gzipped or not ----


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (magic: 0, 0, dtype code 0x08 = uint8, number of dims)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path} could not be read as an idx file: {err}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not a uint8 idx file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(f"{path}: header says {shape} ({expected} bytes) but the file holds {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}; expected the idx files "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz "
        "(Debian: apt-get install dataset-fashion-mnist)"
    )


def load_fashion_mnist(root: str | Path = FASHION_MNIST_ROOT, split: str = "train") -> ImageSet:
    root = Path(root)
    prefix = {"train": "train", "test": "t10k"}[_check_split(split)]
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{root}: images {images.shape} and labels {labels.shape} do not pair up")
    return ImageSet(
        torch.from_numpy(images.copy()).unsqueeze(-1), torch.from_numpy(labels.astype(np.int64)),
        list(FASHION_MNIST_CLASSES), "fashion-mnist",
    )  # fmt: skip


# ---- CIFAR-10/100: the "python version" batches (pickled dicts of numpy arrays) ----


class _CifarUnpickler(pickle.Unpickler):
    """Unpickle only what CIFAR batches contain (dicts, lists, bytes, numpy arrays): no code runs."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to load {module}.{name} from a CIFAR batch: not a plain data object")


def _load_batch(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"CIFAR batch {path} not found")
    try:
        with open(path, "rb") as fh:
            return _CifarUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
    except DataError:
        raise
    except Exception as err:  # a malformed pickle can fail in many ways
        raise DataError(f"{path} is not a CIFAR python batch: {err}") from None


def _key(batch: dict, name: str, path: Path):
    for key in (name.encode(), name):
        if key in batch:
            return batch[key]
    raise DataError(f"{path} has no {name!r} entry; is it a CIFAR python batch?")


def load_cifar(root: str | Path, split: str = "train", fine: bool = False) -> ImageSet:
    """CIFAR-10 (``data_batch_1..5``, ``test_batch``, ``batches.meta``) or CIFAR-100 (``train``, ``test``, ``meta``)."""
    root = Path(root)
    split = _check_split(split)
    if fine:
        files, meta_file, label_key, names_key = [root / split], root / "meta", "fine_labels", "fine_label_names"
    else:
        files = [root / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [root / "test_batch"]
        meta_file, label_key, names_key = root / "batches.meta", "labels", "label_names"
    if not root.is_dir():
        raise DataError(f"CIFAR folder {root} does not exist; expected the extracted 'python version' batches")
    images, labels = [], []
    for path in files:
        batch = _load_batch(path)
        data = np.asarray(_key(batch, "data", path), dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{path}: 'data' has shape {data.shape}, expected [N, 3072]")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(_key(batch, label_key, path), dtype=np.int64))
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _key(_load_batch(meta_file), names_key, meta_file)]
    return ImageSet(
        torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)), names,
        "cifar100" if fine else "cifar10",
    )  # fmt: skip


# ---- ImageFolder: root/<class>/<image> ----


def load_image_folder(root: str | Path, size: int = 28, channels: int = 1) -> ImageSet:
    """Every image under ``root/<class name>/`` resized to ``size``; classes sorted by name."""
    from PIL import Image

    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise DataError(f"image folder {root} must contain one sub-folder of images per class (root/<class>/<image>)")
    mode = "L" if channels == 1 else "RGB"
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as img:
                    arr = np.asarray(img.convert(mode).resize((size, size)), dtype=np.uint8)
            except Exception as err:  # PIL raises many types for bad files
                raise DataError(f"{path} is not a readable image: {err}") from None
            images.append(arr.reshape(size, size, channels))
            labels.append(label)
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    return ImageSet(torch.from_numpy(np.stack(images)), torch.tensor(labels), classes, "folder")


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    return split


def load_dataset(name: str, split: str, root: str | Path | None = None) -> ImageSet:
    """Load a data set by name; ``root`` overrides the default location."""
    if name == "fashion-mnist":
        return load_fashion_mnist(root or FASHION_MNIST_ROOT, split)
    if name in ("cifar10", "cifar100"):
        if root is None:
            raise DataError(f"{name} cannot be downloaded here; pass --data-root with the extracted python batches")
        return load_cifar(root, split, fine=name == "cifar100")
    if name == "folder":
        if root is None:
            raise DataError("--data folder needs --data-root DIR laid out as DIR/<split>/<class>/<image>")
        return load_image_folder(Path(root) / split)
    raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


# ---- batch transforms ----


def normalization(name: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std for a data set (image folders use 0.5/0.5)."""
    return NORMALIZATION.get(name, ((0.5,) * channels, (0.5,) * channels))


def to_input(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 [B, H, W, C] -> normalised float [B, C, H, W]."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 2, flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip on uint8 [B, H, W, C]."""
    b, h, w, _ = images.shape
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2), (pad, pad, pad, pad)).permute(0, 2, 3, 1)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy.view(b, 1) + torch.arange(h)).view(b, h, 1).expand(b, h, w)
    cols = (dx.view(b, 1) + torch.arange(w)).view(b, 1, w).expand(b, h, w)
    out = padded[torch.arange(b).view(b, 1, 1), rows, cols]
    if flip:
        flips = torch.rand(b, generator=generator) < 0.5
        out[flips] = out[flips].flip(2)
    return out
