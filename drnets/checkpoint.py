"""Checkpoints: weights in safetensors + a JSON config; loading never unpickles.

A model directory holds ``model.safetensors`` and ``config.json``::

    {"format": "drnets-checkpoint", "version": 1, "model": "drnet",
     "config": {...}, "class_names": [...], "training": {...}}

Every file is written to a temporary name and moved into place with ``os.replace``,
so a crash mid-save leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .model import create_model, model_config

FORMAT, VERSION = "drnets-checkpoint", 1
WEIGHTS, CONFIG = "model.safetensors", "config.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a message naming the problem."""


@dataclass
class Checkpoint:
    model: nn.Module
    name: str
    class_names: list[str]
    training: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are meant to be shared
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    name: str,
    class_names: list[str],
    training: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` atomically into ``directory``."""
    directory = Path(directory)
    if len(class_names) != model.config.num_classes:
        raise CheckpointError(f"{len(class_names)} class names for a model with {model.config.num_classes} classes")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model": name,
        "config": model_config(model),
        "class_names": list(class_names),
        "training": training or {},
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # The config travels inside the weights file too, so a crash between the two renames
    # is detected as a mismatch instead of loading weights under a stale config.
    embedded = {"drnets_architecture": _architecture(meta)}
    atomic_write(directory / WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata=embedded))
    atomic_write_text(directory / CONFIG, json.dumps(meta, indent=2))
    return directory


def _architecture(meta: dict[str, Any]) -> str:
    return json.dumps({"model": meta["model"], "config": meta["config"]}, sort_keys=True)


def _read_config(directory: Path) -> dict[str, Any]:
    config_path = directory / CONFIG
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} is missing; a drnets checkpoint folder holds {WEIGHTS} and {CONFIG}")
    try:
        meta = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f'{config_path} is not a drnets checkpoint config (expected "format": "{FORMAT}")')
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{config_path} has format version {meta.get('version')}; this drnets reads {VERSION}")
    for key, kind in (("model", str), ("config", dict), ("class_names", list)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{config_path}: field {key!r} is missing or not a {kind.__name__}")
    return meta


def _read_header(path: Path, meta: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the safetensors header, read without loading any tensor."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt") as fh:
            embedded = (fh.metadata() or {}).get("drnets_architecture")
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from None
    if embedded is not None and embedded != _architecture(meta):
        raise CheckpointError(f"{path} was saved for another architecture than {path.parent / CONFIG} describes")
    return shapes


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from None


def _check_state(model: nn.Module, state: dict[str, tuple[int, ...]], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: weights {state[k]} vs config {v}" for k, v in expected.items() if k in state and state[k] != v]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches (e.g. {wrong[:3]})")
    if problems:
        raise CheckpointError(f"{path} does not match its config.json: " + "; ".join(problems))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild a model from a checkpoint folder, checking the config against the weights.

    Raises:
        CheckpointError: missing files, a pickle file, corrupt weights, a config that
            does not describe the weights, or class names that do not fit the model.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{path} looks like a pickle file; drnets never unpickles checkpoints because unpickling can run "
                f"arbitrary code. Give a folder with {WEIGHTS} and {CONFIG}."
            )
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} does not exist")
    meta = _read_config(path)
    # Check the config against the weights on a shape-only skeleton first, so a hostile
    # config (say, channels=10**6) is refused before it can allocate anything.
    with torch.device("meta"):
        skeleton = _build(meta, path)
    class_names = meta["class_names"]
    if not all(isinstance(c, str) for c in class_names):
        raise CheckpointError(f"{path / CONFIG}: class_names must be a list of strings")
    if len(class_names) != skeleton.config.num_classes:
        raise CheckpointError(
            f"{path / CONFIG}: class_names has {len(class_names)} entries but the model has "
            f"{skeleton.config.num_classes} classes"
        )
    _check_state(skeleton, _read_header(path / WEIGHTS, meta), path / WEIGHTS)
    model = _build(meta, path)
    model.load_state_dict(_read_weights(path / WEIGHTS))
    model.to(map_location).eval()
    return Checkpoint(model, meta["model"], list(class_names), meta.get("training", {}), path)


# Config fields that format-version-1 checkpoints may lack, with the value such a checkpoint
# was trained with (its config.json lacks the field).
LEGACY_DEFAULTS = {"drnet": {"router_input": "cell"}, "dense": {"router_input": "cell"}}


def _build(meta: dict[str, Any], path: Path) -> nn.Module:
    try:
        return create_model(meta["model"], **{**LEGACY_DEFAULTS.get(meta["model"], {}), **meta["config"]})
    except ValueError as err:
        raise CheckpointError(f"{path / CONFIG}: {err}") from None
