"""Checkpoints: exact round trip, clear refusals, no unpickling, and saves that survive SIGKILL."""

from __future__ import annotations

import json
import os
import pickle
import random
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from drnets.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from drnets.model import create_model

CLASSES = [f"class {i}" for i in range(10)]
TRAINING = {"dataset": "fashion-mnist", "mean": [0.286], "std": [0.353], "input_size": [1, 28, 28]}


def warmed(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Non-default BatchNorm statistics, so the round trip has to carry the buffers too."""
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.fixture
def saved(tmp_path, tiny_model, mixed_batch) -> tuple[Path, torch.nn.Module]:
    model = warmed(tiny_model(), mixed_batch())
    save_checkpoint(tmp_path / "ckpt", model, "drnet", CLASSES, TRAINING)
    return tmp_path / "ckpt", model


def edit_config(folder: Path, edit) -> None:
    meta = json.loads((folder / "config.json").read_text())
    edit(meta)
    (folder / "config.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("name", ["drnet", "dense", "mobilenetv2"])
def test_round_trip_gives_identical_outputs(tmp_path, tiny_model, mixed_batch, name) -> None:
    x = mixed_batch()
    model = warmed(tiny_model(name, threshold=0.2) if name == "drnet" else tiny_model(name), x)
    save_checkpoint(tmp_path, model, name, CLASSES, TRAINING)
    loaded = load_checkpoint(tmp_path)
    assert (loaded.name, loaded.class_names, loaded.training) == (name, CLASSES, TRAINING)
    assert loaded.model.config == model.config and not loaded.model.training
    with torch.no_grad():
        (logits, trace), (ref_logits, ref_trace) = loaded.model(x), model(x)
    assert torch.equal(logits, ref_logits) and torch.equal(trace.ran, ref_trace.ran)
    assert torch.equal(trace.flops, ref_trace.flops)
    # Also addressable by its weights file.
    assert load_checkpoint(tmp_path / "model.safetensors").model.config == model.config


def test_config_that_does_not_match_the_weights_is_refused(saved) -> None:
    folder, _ = saved
    edit_config(folder, lambda meta: meta["config"].update(channels=6))
    with pytest.raises(CheckpointError, match="saved for another architecture"):
        load_checkpoint(folder)


def test_weights_without_embedded_config_are_checked_tensor_by_tensor(saved) -> None:
    """A hand-made safetensors file (no drnets metadata) is still checked shape by shape and key by key."""
    folder, model = saved
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    assert load_checkpoint(folder).model.config == model.config
    edit_config(folder, lambda meta: meta["config"].update(channels=6))
    with pytest.raises(CheckpointError, match=r"does not match its config.json: .*shape mismatches.*stem.0.weight"):
        load_checkpoint(folder)
    edit_config(folder, lambda meta: meta["config"].update(channels=4))
    del state["classifier.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 tensors missing .*classifier.weight"):
        load_checkpoint(folder)


def test_checkpoint_from_before_router_input_loads_as_cell_routed(tmp_path, tiny_model, mixed_batch) -> None:
    """Checkpoints written before ``router_input`` existed (config.json and the weights'
    embedded architecture both lack it) were trained with cell routing and load as such."""
    x = mixed_batch()
    model = warmed(tiny_model(router_input="cell"), x)
    save_checkpoint(tmp_path, model, "drnet", CLASSES, TRAINING)
    edit_config(tmp_path, lambda meta: meta["config"].pop("router_input"))
    meta = json.loads((tmp_path / "config.json").read_text())
    architecture = json.dumps({"model": meta["model"], "config": meta["config"]}, sort_keys=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"drnets_architecture": architecture})
    loaded = load_checkpoint(tmp_path)
    assert loaded.model.config.router_input == "cell"
    with torch.no_grad():
        assert torch.equal(loaded.model(x)[0], model(x)[0])


def test_hostile_config_is_refused_before_allocating(saved) -> None:
    """channels=10**6 would need terabytes; the check runs on a shape-only skeleton and refuses it at once."""
    folder, model = saved
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    edit_config(folder, lambda meta: meta["config"].update(channels=10**6))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(folder)


def test_truncated_weights_are_refused(saved) -> None:
    folder, _ = saved
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    for size in (len(data) - 10, len(data) // 2, 100, 5, 0):
        weights.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match=r"model.safetensors is not a readable safetensors file"):
            load_checkpoint(folder)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"format": "drnets-checkpoint", ', "is not valid JSON"),
        ("\xff\xfe garbage", "is not valid JSON"),
        ("[1, 2]", "is not a drnets checkpoint config"),
        ('{"format": "drnets-checkpoint", "version": 99}', "format version 99"),
    ],
)
def test_corrupt_config_is_refused(saved, text: str, message: str) -> None:
    folder, _ = saved
    (folder / "config.json").write_text(text, encoding="latin-1")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(class_names=["a", "b", "c"]), r"class_names has 3 entries but the model has 10 classes"),
        (lambda m: m.update(class_names=list(range(10))), r"class_names must be a list of strings"),
        (lambda m: m.pop("config"), r"field 'config' is missing"),
        (lambda m: m.update(model="resnet50"), r"unknown model 'resnet50'"),
        (lambda m: m["config"].update(branches=["sep_conv_3x3", "conv_9x9"]), r"conv_9x9"),
        (lambda m: m["config"].update(width=3), r"invalid config .*width"),
    ],
    ids=["class_count", "class_type", "no_config", "unknown_model", "unknown_branch", "unknown_key"],
)
def test_bad_config_fields_are_refused(saved, edit, message: str) -> None:
    folder, _ = saved
    edit_config(folder, edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)


def test_missing_files_are_named(saved, tmp_path) -> None:
    folder, _ = saved
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors is missing"):
        load_checkpoint(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config.json is missing"):
        load_checkpoint(folder)


def test_saving_with_wrong_class_names_is_refused(tmp_path, tiny_model) -> None:
    with pytest.raises(CheckpointError, match="3 class names for a model with 10 classes"):
        save_checkpoint(tmp_path, tiny_model(), "drnet", ["a", "b", "c"])
    assert not (tmp_path / "model.safetensors").exists()


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_pickle_payload_really_runs_when_unpickled(tmp_path) -> None:
    """Control: the payload is live, so its absence below means loading never unpickled it."""
    marker = tmp_path / "pwned"
    blob = tmp_path / "payload.pkl"
    blob.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(blob)!r}, 'rb'))"], check=True)
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".bin"])
def test_pickle_files_are_refused_and_never_run(saved, tmp_path, suffix: str) -> None:
    folder, _ = saved
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": Payload(marker)})
    pickled = folder / f"model{suffix}"
    pickled.write_bytes(payload)
    with pytest.raises(CheckpointError, match="pickle file.*never unpickles"):
        load_checkpoint(pickled)
    # A pickle disguised as the weights file is rejected by the safetensors parser.
    (folder / "model.safetensors").write_bytes(payload)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(folder)
    # torch.save output is a zip of pickles; also refused.
    torch.save({"x": Payload(marker)}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(folder)
    assert not marker.exists()


SAVER = textwrap.dedent(
    """
    import os, sys, torch
    from drnets.checkpoint import save_checkpoint
    from drnets.model import create_model

    folder, classes = sys.argv[1], [str(i) for i in range(10)]
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(create_model("drnet", channels=8, num_cells=3, num_nodes=2))
    # One interpreter start, then a fresh forked saver per round: the test SIGKILLs the child.
    for _ in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:
                for i in range(10**9):
                    save_checkpoint(folder, models[i % 2], "drnet", classes, {"save": i})
                    if i == 0:
                        print(os.getpid(), flush=True)  # one save done: from here on we are mid-loop
            finally:
                os._exit(1)
        os.waitpid(pid, 0)
        print("reaped", flush=True)
    """
)


def test_sigkill_during_saves_leaves_a_loadable_checkpoint(tmp_path) -> None:
    """SIGKILL a process that saves two alternating models in a loop; the folder must always load one of them."""
    folder = tmp_path / "ckpt"
    expected = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        expected.append(create_model("drnet", channels=8, num_cells=3, num_nodes=2).state_dict())
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # single-threaded parent: forking it is safe
    saver = subprocess.Popen(
        [sys.executable, str(script), str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        for _ in range(5):
            saver.stdin.write("go\n")
            saver.stdin.flush()
            child = int(saver.stdout.readline())
            time.sleep(rng.uniform(0.0, 0.2))
            os.kill(child, signal.SIGKILL)
            assert saver.stdout.readline().strip() == "reaped"
            state = load_checkpoint(folder).model.state_dict()
            matches = [all(torch.equal(state[k], v) for k, v in m.items()) for m in expected]
            assert any(matches), "the checkpoint holds weights that are neither the old nor the new model"
    finally:
        saver.kill()
        saver.wait()
