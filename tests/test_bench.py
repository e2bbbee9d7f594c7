"""The benchmarks run end to end at tiny sizes and report finite, consistent numbers.

Timings are never asserted (benchmarks report, they do not fail on speed); what is
asserted is that every script runs, that its ratios are the ratios of its own timings
and FLOPs, and that benchmarking leaves the models untouched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from bench import app_path, breakdown, latency, masked, parts, pooling, sweep, train_throughput
from bench.__main__ import main as bench_main
from bench.common import (
    MODELS,
    Settings,
    add_settings_args,
    cpu_bf16_flags,
    inference,
    load_model,
    prepare,
    settings_from_args,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = Settings(device="cpu", warmup=0, repeats=1)
HEADLINE = (
    "realized_speedup_b1",
    "flops_ratio_b1",
    "realized_speedup_b64",
    "flops_ratio_b64",
    "drnet_vs_mobilenetv2_b1",
    "drnet_vs_mobilenetv2_b64",
    "app_path_ms",
    "ig32_s",
    "train_speedup",
)


def positive(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def models():
    return {name: load_model(name) for name in MODELS}


def test_latency_ratios_are_the_ratios_of_its_own_measurements(models) -> None:
    result = latency.run(TINY, batches=(1, 3), images_b1=2, models=models)
    assert [r["batch"] for r in result["rows"]] == [1, 3]
    for row in result["rows"]:
        ms, flops = row["ms_per_image"], row["flops_mean"]
        assert all(positive(v) for v in [*ms.values(), *flops.values()])
        assert row["realized_speedup"] == pytest.approx(ms["dense"] / ms["drnet"])
        assert row["flops_ratio"] == pytest.approx(flops["dense"] / flops["drnet"])
        assert row["drnet_vs_mobilenetv2"] == pytest.approx(ms["mobilenetv2"] / ms["drnet"])
        assert flops["drnet"] <= flops["dense"] * 1.01  # the router adds < 1%; skipping only removes
        assert all(isinstance(n, int) and n >= 0 for n in row["page_faults_per_call"].values())
    assert 0 < result["ours_vs_mobilenetv2"]["flops_pct_of_mobilenetv2"] < 100


def test_pooling_compares_both_kernels_on_every_node_shape() -> None:
    """It checks each pair agrees (it raises otherwise) and reports one ratio per pool and shape."""
    result = pooling.run(TINY, batches=(2,))
    pools = {1: ("max s1", "avg s1"), 2: ("avg s2",)}  # stride-2 max pool has no other form
    assert [(r["shape"], r["pool"]) for r in result["rows"]] == [
        (f"{c}x{side}x{side}", pool) for c, side, stride in pooling.pool_shapes() for pool in pools[stride]
    ]
    for row in result["rows"]:
        assert positive(row["aten_us"]) and positive(row["fast_us"])
        assert row["speedup"] == pytest.approx(row["aten_us"] / row["fast_us"])


@pytest.mark.parametrize("fast", [True, False])
def test_masked_reports_the_gather_scatter_share(models, fast: bool) -> None:
    result = masked.run(dataclasses.replace(TINY, fast=fast), batches=(1, 4), images_b1=2, loaded=models["drnet"])
    assert result["sparse_path"] == ("fast" if fast else "plain")
    one, four = result["rows"]
    assert one["partial_branches_pct"] == 0 and one["gather_scatter_pct_of_sparse"] == 0  # batch 1 never gathers
    for row in (one, four):
        assert positive(row["sparse_ms_per_image"]) and positive(row["masked_over_sparse"])
        assert 0 <= row["gather_scatter_pct_of_sparse"] < 100
        assert 0 < row["branches_ran_pct"] <= 100
        # Skipping every branch keeps the stem, preprocessing, routers and classifier: some but not all FLOPs.
        assert 0 < row["every_image_pct_of_flops"] < 100 and positive(row["every_image_pct_of_sparse_time"])


def test_training_benchmark_trains_copies_only(models) -> None:
    before = {name: {k: v.clone() for k, v in m.model.state_dict().items()} for name, m in models.items()}
    result = train_throughput.run(TINY, batch=4, steps=1, models=models)
    assert positive(result["train_speedup"])
    assert all(positive(r["images_per_s"]) and positive(r["forward_mflops_per_image"]) for r in result["rows"])
    for name, m in models.items():
        after = m.model.state_dict()
        assert all(torch.equal(before[name][k], after[k]) for k in before[name]), f"{name} was modified"
        assert not m.model.training


def test_training_benchmark_times_a_subset_of_the_models(models) -> None:
    result = train_throughput.run(TINY, batch=4, steps=1, models={"drnet": models["drnet"]})
    assert [r["model"] for r in result["rows"]] == ["drnet"] and positive(result["rows"][0]["ms_per_step"])
    assert result["train_speedup"] is None  # needs the dense supernet beside the DRNet


def test_app_path_times_upload_prediction_and_every_attribution(models) -> None:
    result = app_path.run(TINY, models["drnet"], attribution_repeats=1)
    assert positive(result["app_path_ms"]) and positive(result["tables_ms"])
    assert {r["method"] for r in result["attribution"]} == {"saliency", "gradcam", "integrated_gradients", "occlusion"}
    assert all(positive(r["seconds"]) for r in result["attribution"])
    assert result["ig32_s"] == next(
        r["seconds"] for r in result["attribution"] if r["method"] == "integrated_gradients"
    )


@pytest.mark.parametrize("train", [False, True])
def test_breakdown_groups_the_profiled_time_of_forwards_or_training_steps(train: bool) -> None:
    result = breakdown.run(TINY, "drnet", batches=(4,), images_b1=2, rows=5, train=train)
    (row,) = result["rows"]
    assert result["work"] == ("training step" if train else "forward")
    assert positive(row["ms_per_call"]) and row["ops_per_call"] > 0 and "aten::" in row["table"]
    assert math.isclose(sum(row["share_pct"].values()), 100.0) and row["share_pct"]["convolution"] > 0


@pytest.mark.parametrize("fast", [True, False])
def test_parts_split_each_forward_and_say_which_parts_would_raise_efficiency(models, fast: bool) -> None:
    settings = dataclasses.replace(TINY, fast=fast)
    result = parts.run(settings, batches=(4,), images_b1=2)
    (row,) = result["rows"]
    rows = {r["part"]: r for r in row["parts"]}
    # The dense supernet runs every kind of branch, strided ones included, and every image pays the fixed parts.
    dense = prepare(models["dense"].model, settings)
    branch_kinds = {p for p, *_ in parts.timed_modules(dense)} - {"stem", "preprocessing", "head"}
    assert len(branch_kinds) == 14 and all(rows[k]["dense_ms_per_image"] > 0 for k in branch_kinds)
    every_image = ("stem", "preprocessing", "router MLPs", "head")
    assert set(rows) == branch_kinds | {*every_image, parts.REST}
    assert all(rows[p]["drnet_ms_per_image"] > 0 for p in every_image)
    assert rows["router MLPs"]["dense_ms_per_image"] == 0  # its input-independent weights are no module call
    for model in ("drnet", "dense"):
        assert math.isclose(sum(r[f"{model}_pct"] for r in row["parts"]), 100.0)
        assert math.isclose(sum(r[f"{model}_ms_per_image"] for r in row["parts"]), row[f"{model}_ms_per_image"])
    assert row["efficiency"] == pytest.approx(
        row["dense_ms_per_image"] / row["drnet_ms_per_image"] / row["flops_ratio"]
    )
    # Halving one part raises efficiency exactly when it is a larger share of the DRNet's time.
    for part, r in rows.items():
        if part != parts.REST and not math.isclose(r["drnet_pct"], r["dense_pct"]):
            assert (r["efficiency_if_2x_faster"] > row["efficiency"]) == (r["drnet_pct"] > r["dense_pct"])
    assert rows[parts.REST]["efficiency_if_2x_faster"] is None
    for loaded in models.values():  # the timers wrapped private copies only
        assert not any({"forward", "rectified"} & m.__dict__.keys() for m in loaded.model.modules())
    with parts.timed_parts(dense, settings, {}):
        wrapped = [m for _, m, method in parts.timed_modules(dense) if method in m.__dict__]
        assert len(wrapped) == len(list(parts.timed_modules(dense)))
    assert not any({"forward", "rectified"} & m.__dict__.keys() for m in dense.modules())  # and unwrapped them


def test_breakdown_refuses_training_steps_at_batch_1(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        breakdown.main(["--train", "--batches", "1,8"])
    assert exit_info.value.code == 2 and "--train needs batches of at least 2" in capsys.readouterr().err


def test_photo_bytes_is_a_real_upload() -> None:
    from drnets.upload import prepare_upload

    prepared = prepare_upload(app_path.photo_bytes())
    assert prepared.tensor.shape == (1, 1, 28, 28) and max(prepared.original.size) == 512
    assert "separated the object from the background (GrabCut)" in prepared.notes and not prepared.unsure


def test_sweep_threshold_zero_runs_every_branch(models) -> None:
    result = sweep.run(TINY, thresholds=(0.0, 0.3), limit=12, batch_size=5, models=models)
    rows = {(r["model"], r["threshold"]): r for r in result["rows"]}
    assert set(rows) == {("drnet", 0.0), ("drnet", 0.3), ("dense", None), ("mobilenetv2", None)}
    assert result["images"] == 12
    for row in rows.values():
        assert 0 <= row["accuracy"] <= 1 and positive(row["ms_per_image"]) and positive(row["flops_mean"])
    everything = models["drnet"].model.cost_table(28, 28).dense_flops
    assert rows[("drnet", 0.0)]["flops_mean"] == everything  # every gate weight is >= 0
    assert rows[("drnet", 0.3)]["flops_mean"] < everything
    assert rows[("dense", None)]["flops_ratio"] == 1.0


def test_bad_only_flag_is_refused_with_a_message(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--only", "latency,nonsense"])
    assert exit_info.value.code == 2
    assert "--only takes a comma-separated subset" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("script", "flags", "message"),
    [
        (latency, ["--batches", "0"], "argument --batches: must be >= 1, got 0"),
        (latency, ["--batches", "1,-3"], "argument --batches: must be >= 1, got -3"),
        (masked, ["--batches", "abc"], "argument --batches: invalid positive_ints value: 'abc'"),
        (parts, ["--batches", "2,0"], "argument --batches: must be >= 1, got 0"),
        (latency, ["--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
        (sweep, ["--thresholds", "0.1,2"], "argument --thresholds: must lie in [0, 1], got 2.0"),
        (train_throughput, ["--batch", "0"], "argument --batch: must be >= 1, got 0"),
        (train_throughput, ["--models", "drnet,resnet"], "argument --models: must be a comma-separated subset"),
    ],
)
def test_bad_numbers_are_usage_errors_not_stack_traces(script, flags: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        script.main(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_no_fast_times_the_plain_model_with_every_batch_norm(models) -> None:
    parser = argparse.ArgumentParser()
    add_settings_args(parser)
    plain = settings_from_args(parser.parse_args(["--no-fast", "--device", "cpu", "--layout", "nchw"]))
    assert not plain.fast and TINY.fast
    x = torch.zeros(2, 1, 28, 28)
    counts, logits = [], []
    for settings in (plain, TINY):
        model = prepare(models["mobilenetv2"].model, settings)
        with inference(settings), profile(activities=[ProfilerActivity.CPU]) as prof:
            logits.append(model(x, None)[0])
        counts.append(sum(e.count for e in prof.key_averages() if e.key == "aten::batch_norm"))
    assert counts == [52, 0]  # every BN of MobileNetV2, then none: the fast path folds them
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)


def test_bad_device_is_refused_with_a_message() -> None:
    with pytest.raises(SystemExit, match="is not a torch device"):
        bench_main(["--device", "banana", "--smoke"])


def test_cli_prints_one_json_object_with_the_headline_numbers() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)  # stdout holds nothing but the JSON object
    for key in HEADLINE:
        assert positive(report[key]), f"{key} = {report[key]!r}"
    assert report["machine"]["cpu"] and report["machine"]["torch"] == torch.__version__
    assert set(report["machine"]["cpu_bf16"]) <= {"amx_bf16", "avx512_bf16"}
    assert set(report["definitions"]) >= {"realized_speedup", "flops_ratio", "drnet_vs_mobilenetv2"}
    assert {g["metric"] for g in report["goals"]} >= {"efficiency_b1", "app_path_ms", "train_speedup"}
    assert set(report["results"]) == {"latency", "masked", "train", "app_path", "sweep"}


def test_latency_times_another_drnet_checkpoint_or_says_why_not(tmp_path: Path) -> None:
    shipped = ROOT / "assets" / "models" / "drnet"
    assert load_model("drnet", shipped).source == "assets/models/drnet"
    with pytest.raises(SystemExit, match="does not exist"):
        latency.main(["--drnet", str(tmp_path / "missing"), "--batches", "1"])
    with pytest.raises(SystemExit, match="holds a 'dense' model, not a 'drnet' one"):
        latency.main(["--drnet", str(ROOT / "assets" / "models" / "dense"), "--batches", "1"])
    with pytest.raises(SystemExit, match="holds a 'dense' model, not a 'drnet' one"):
        parts.main(["--drnet", str(ROOT / "assets" / "models" / "dense"), "--batches", "1"])
    assert parts.run(TINY, batches=(2,), images_b1=1, drnet=shipped)["models"]["drnet"] == "assets/models/drnet"


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16", ["amx_bf16", "avx512_bf16"]),
        ("fpu sse2 avx2 avx512f", []),
    ],
)
def test_machine_record_names_the_cpus_native_bf16(tmp_path: Path, flags: str, expected: list[str]) -> None:
    """So a reader of the JSON knows whether ``--amp`` (bf16 autocast) was worth timing on that CPU."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    assert cpu_bf16_flags(cpuinfo) == expected
    assert cpu_bf16_flags(tmp_path / "missing") == []
