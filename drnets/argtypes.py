"""Argument types for the command lines (``drnets ...`` and ``python -m bench...``).

argparse turns the ``ArgumentTypeError`` (or the ``ValueError`` of a non-number) into a one-line
usage error naming the flag, so a bad value never reaches the code as a stack trace.
"""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def unit_float(text: str) -> float:
    """A value in [0, 1], such as a routing threshold."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return value


def open_unit_float(text: str) -> float:
    """A value in (0, 1), such as a budget."""
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {value}")
    return value


def positive_ints(text: str) -> tuple[int, ...]:
    """A comma-separated list such as batch sizes: ``1,64,256``."""
    return tuple(positive_int(part) for part in _parts(text))


def unit_floats(text: str) -> tuple[float, ...]:
    """A comma-separated list of values in [0, 1], such as thresholds."""
    return tuple(unit_float(part) for part in _parts(text))


def _parts(text: str) -> list[str]:
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of numbers, got {text!r}")
    return parts
