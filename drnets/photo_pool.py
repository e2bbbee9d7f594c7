"""Garment photos as training data, in the form the upload path gives them to a model.

``drnets.augment`` imitates what upload preprocessing leaves behind; a pool of real
preprocessing output shows it exactly: the shape GrabCut cuts, a shadow kept, a sleeve lost, the
stretch of a dark garment on a dark floor. ``drnets photos --split train`` renders phone-style
photos of TRAINING images; ``prepared_pool`` runs each through ``drnets.upload.prepare_upload``
as an upload would be, and caches the result next to the photos (preparing takes about 0.15 s a
photo). ``drnets train --photo-pool DIR`` mixes the pool into every epoch.

Outlier exposure (Hendrycks et al. 2019) uses the same path for things that are not garments:
``drnets nongarments`` folders, prepared as uploads are, labelled ``OUTLIER``, which the training
loss teaches the model to answer with a flat distribution (``drnets.losses.outlier_loss``).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import io
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write
from .data import ImageSet
from .photos import read_labels

CACHE = "prepared-{c}x{h}x{w}.npz"
OUTLIER = -1  # the label of an outlier-exposure image: no class


def prepared_pool(
    folders: list[str] | tuple[str, ...], input_size: tuple[int, int, int], class_names: list[str]
) -> ImageSet:
    """The photos of every folder as uint8 [N, H, W, C] model inputs (before normalisation), with labels.

    Raises:
        ValueError: a folder holds no photo set, or photos of test images (training on them would
            leave the photo evaluation measuring what the model has seen).
    """
    images, labels = [], []
    for folder in map(Path, folders):
        if not (folder / "labels.csv").is_file():
            raise ValueError(f"--photo-pool {folder}: no labels.csv there; make one with `drnets photos --split train`")
        rows = read_labels(folder)
        if any(row.split != "train" for row in rows):
            raise ValueError(
                f"--photo-pool {folder}: photos of test images; make a pool with `drnets photos --split train`"
            )
        images.append(_prepared(folder, [row.file for row in rows], input_size))
        labels.append(torch.tensor([row.label for row in rows]))
    return ImageSet(torch.cat(images), torch.cat(labels), class_names, "photo-pool")


def prepared_outliers(
    folders: list[str] | tuple[str, ...], input_size: tuple[int, int, int], class_names: list[str]
) -> ImageSet:
    """The non-garments of every ``drnets nongarments`` folder as model inputs labelled ``OUTLIER``.

    Make them with other seeds than the set the detector is measured on (``drnets ood-eval``).
    """
    from .nongarments import KINDS_CSV, read_kinds

    images = []
    for folder in map(Path, folders):
        if not (folder / KINDS_CSV).is_file():
            raise ValueError(f"--outlier-pool {folder}: no {KINDS_CSV} there; make one with `drnets nongarments`")
        images.append(_prepared(folder, [file for file, _ in read_kinds(folder)], input_size))
    seen = torch.cat(images)
    return ImageSet(seen, torch.full((len(seen),), OUTLIER), class_names, "outlier-pool")


def mixed(data: ImageSet, pool: ImageSet, share: float) -> ImageSet:
    """``data`` followed by ``pool`` repeated so that pool photos are about ``share`` of the result."""
    repeats = max(1, round(share * len(data) / ((1 - share) * len(pool))))
    images = torch.cat([data.images, pool.images.repeat(repeats, 1, 1, 1)])
    labels = torch.cat([data.labels, pool.labels.repeat(repeats)])
    return ImageSet(images, labels, data.class_names, data.name)


def _prepared(folder: Path, files: list[str], input_size: tuple[int, int, int]) -> torch.Tensor:
    c, h, w = input_size
    cache = folder / CACHE.format(c=c, h=h, w=w)
    preparation = preparation_digest()
    if cache.is_file():
        with np.load(cache) as stored:
            if list(stored["files"]) == files and str(stored.get("preparation", "")) == preparation:
                return torch.from_numpy(stored["seen"])
    paths = [str(folder / name) for name in files]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        seen = np.stack(list(pool.map(_prepare_one, paths, [input_size] * len(paths), chunksize=16)))
    seen = seen.reshape(len(files), h, w, c)

    def write(tmp: Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, seen=seen, files=np.asarray(files), preparation=np.asarray(preparation))
        tmp.write_bytes(buffer.getvalue())

    atomic_write(cache, write)
    return torch.from_numpy(seen)


def preparation_digest() -> str:
    """The upload path's ``code_digest``: a cache prepared by other code is prepared again."""
    from . import segment, upload

    return code_digest([inspect.getsource(upload), inspect.getsource(segment)])


def code_digest(sources: list[str]) -> str:
    """SHA-256 of the sources' syntax trees without docstrings (comments never reach a tree): an
    edited comment or docstring leaves it as it was, so it does not cost a pool's preparation."""
    trees = []
    for source in sources:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and _is_docstring(body[0]):
                node.body = body[1:]
        trees.append(ast.dump(tree))
    return hashlib.sha256("\n".join(trees).encode()).hexdigest()


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _prepare_one(path: str, input_size: tuple[int, int, int]) -> np.ndarray:
    from .upload import prepare_upload

    torch.set_num_threads(1)
    c = input_size[0]
    return prepare_upload(Path(path).read_bytes(), input_size, (0.0,) * c, (1.0,) * c).seen
