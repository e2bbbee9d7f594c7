"""`python -m drnets info`: every model's parameters and dense FLOPs per input size, as a table and as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from drnets.cli import INPUT_SHAPES
from drnets.model import create_model, list_models


def drnets(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "drnets", *args], check=False, capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def expected() -> list[dict]:
    rows = []
    for name in list_models():
        for shape in INPUT_SHAPES:
            model = create_model(name, in_channels=shape[0])
            table = model.cost_table(*shape[1:])
            assert table.dense_params == sum(p.numel() for p in model.parameters())
            rows.append({"model": name, "input_shape": list(shape), "params": table.dense_params,
                         "dense_flops": table.dense_flops})  # fmt: skip
    return rows


def test_info_json_lists_every_model_and_input_shape(expected) -> None:
    result = drnets("info", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    assert {(r["model"], tuple(r["input_shape"])) for r in rows} == {
        (name, shape) for name in list_models() for shape in ((1, 28, 28), (3, 32, 32))
    }
    got = {(r["model"], tuple(r["input_shape"])): (r["params"], r["dense_flops"]) for r in rows}
    for row in expected:
        assert got[(row["model"], tuple(row["input_shape"]))] == (row["params"], row["dense_flops"]), row["model"]


def test_info_table_prints_the_same_numbers(expected) -> None:
    result = drnets("info")
    assert result.returncode == 0, result.stderr
    assert "FLOPs = 2 x MACs" in result.stdout
    lines = result.stdout.splitlines()
    for row in expected:
        shape = "x".join(map(str, row["input_shape"]))
        line = next(line for line in lines if line.split()[:2] == [row["model"], shape])
        assert f"{row['params']:,}" in line and f"{row['dense_flops']:,}" in line
