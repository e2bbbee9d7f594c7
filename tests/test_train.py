"""The training CLI on a tiny generated data set: outputs, determinism, SIGKILL + --resume, bad flags."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fakedata import TINY_DRNET, write_idx_dataset

from drnets.checkpoint import load_checkpoint, save_checkpoint
from drnets.cli import main
from drnets.losses import distillation_loss, label_loss
from drnets.model import create_model
from drnets.photo_pool import OUTLIER
from drnets.train import STATE_FILE, TrainConfig, warm_start

EPOCHS = 3
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_idx_dataset(tmp_path_factory.mktemp("fmnist"), n_train=128, n_test=32)


def _command(data_root: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "drnets", "train", "--data", "fashion-mnist", "--data-root", str(data_root),
        "--model-config", TINY_DRNET, "--epochs", str(EPOCHS), "--batch-size", "16", "--seed", "7",
        "--no-progress", "--out", str(out), *extra,
    ]  # fmt: skip


def _train(data_root: Path, out: Path, *extra: str, env: dict[str, str] = ENV) -> dict:
    done = subprocess.run(
        _command(data_root, out, *extra), env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "model").model.state_dict()


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run that the other tests compare against."""
    out = tmp_path_factory.mktemp("reference")
    _train(data_root, out)
    return out


def test_train_writes_checkpoint_log_and_args(reference_run: Path) -> None:
    checkpoint = load_checkpoint(reference_run / "model")
    assert checkpoint.name == "drnet" and checkpoint.model.config.channels == 4
    assert checkpoint.training["dataset"] == "fashion-mnist" and checkpoint.training["input_size"] == [1, 28, 28]
    assert checkpoint.training["epochs_done"] == EPOCHS
    with open(reference_run / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])  # it learns the bars
    args = json.loads((reference_run / "args.json").read_text())
    assert args["seed"] == 7 and args["epochs"] == EPOCHS and args["model_overrides"] == TINY_DRNET
    state = torch.load(reference_run / STATE_FILE, weights_only=True)
    assert int(state["epoch"]) == EPOCHS


def test_same_seed_gives_identical_weights(data_root: Path, reference_run: Path, tmp_path: Path) -> None:
    metrics = _train(data_root, tmp_path)
    _assert_same_weights(_weights(tmp_path), _weights(reference_run))
    with open(reference_run / "log.csv") as fh:
        assert metrics["weights_sha256"] == list(csv.DictReader(fh))[-1]["weights_sha256"]


def test_sigkill_mid_epoch_then_resume_reproduces_the_run(data_root: Path, reference_run: Path, tmp_path: Path) -> None:
    process = subprocess.Popen(
        _command(data_root, tmp_path), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "log.csv").exists():  # log.csv is the last file an epoch writes
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL

    done = int(torch.load(tmp_path / STATE_FILE, weights_only=True)["epoch"])
    assert 1 <= done < EPOCHS  # killed during a later epoch
    checkpoint = load_checkpoint(tmp_path / "model")  # the last checkpoint is intact
    assert checkpoint.training["epochs_done"] in (done - 1, done)  # killed between the two saves at worst

    # How to run may change on resume, unlike the recipe.
    _train(data_root, tmp_path, "--resume", "--no-cudnn", "--layout", "nchw")
    _assert_same_weights(_weights(tmp_path), _weights(reference_run))
    with open(tmp_path / "log.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == list(range(1, EPOCHS + 1))


def test_resume_refuses_a_different_recipe(data_root: Path, reference_run: Path, capsys: pytest.CaptureFixture) -> None:
    args = _command(data_root, reference_run, "--resume", "--lr", "0.1")[3:]
    assert main(args) == 2
    assert "lr: 0.003 -> 0.1" in capsys.readouterr().err


def test_training_runs_on_two_threads(data_root: Path, tmp_path: Path) -> None:
    """The other runs use one thread (bit-exact resumes); a user's run uses all cores, where PyTorch
    2.13 once crashed in a convolution gradient of this 4-channel DRNet (tests/test_ops.py)."""
    metrics = _train(data_root, tmp_path, "--epochs", "1", env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert metrics["epoch"] == 1 and load_checkpoint(tmp_path / "model").training["epochs_done"] == 1


def test_execution_settings_are_recorded_and_the_process_setting_restored(data_root: Path, tmp_path: Path) -> None:
    assert main([*_command(data_root, tmp_path, "--no-cudnn", "--layout", "nchw", "--epochs", "1")[3:]]) == 0
    recorded = json.loads((tmp_path / "args.json").read_text())
    assert recorded["cudnn"] is False and recorded["layout"] == "nchw"
    assert torch.backends.cudnn.enabled  # train() puts the process-wide flag back


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "0"], "must be >= 1"),
        (["--model", "nosuch"], "invalid choice: 'nosuch'"),
        (["--model-config", "{bad"], "--model-config must be a JSON object"),
        (["--model-config", '{"nosuch": 1}'], "invalid config for model 'drnet'"),
        (["--data-root", "/nonexistent/fmnist"], "train-images-idx3-ubyte"),
        (["--data", "cifar10"], "data_batch_1 not found"),
        (["--resume"], "no train_state.pt"),
        (["--tau-start", "0"], "tau_start must be > 0, got 0.0"),
        (["--lr", "nan"], "lr must be > 0, got nan"),
        (["--cost-weight", "-1"], "cost_weight must be >= 0, got -1.0"),
        (["--layout", "nhwc"], "invalid choice: 'nhwc'"),
        (["--init-from", "/nonexistent/ckpt"], "checkpoint folder /nonexistent/ckpt does not exist"),
    ],
)
def test_bad_flags_give_a_clear_error(
    flags: list[str], message: str, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["train", "--data-root", str(data_root), "--epochs", "1", "--limit", "16", "--out", str(tmp_path / "run"),
            "--no-progress", *flags]  # fmt: skip
    try:
        code = main(args)
    except SystemExit as exit_info:  # argparse rejects the flag itself
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_a_budgeted_drnet_starts_from_a_softmax_drnets_weights(reference_run: Path) -> None:
    """--init-from copies every tensor whose name and shape match; the sigmoid routers start fresh."""
    source = load_checkpoint(reference_run / "model").model.state_dict()
    config = {**json.loads(TINY_DRNET), "router_input": "cell", "gate": "sigmoid", "budgeted": True, "threshold": 0.5}
    model = create_model("drnet", **config)
    fresh = warm_start(model, str(reference_run / "model"))
    weights = model.state_dict()
    assert fresh and all(".router." in name for name in fresh)
    copied = [k for k in weights if k not in fresh]
    assert any(k.startswith("stem.") for k in copied) and any(".branches." in k for k in copied)
    assert all(torch.equal(weights[k], source[k]) for k in copied)


def test_a_checkpoint_of_another_architecture_is_refused(reference_run: Path, tmp_path: Path) -> None:
    other = create_model("mobilenetv2", width_mult=0.25)
    save_checkpoint(tmp_path / "mnv2", other, "mobilenetv2", [str(i) for i in range(10)], {})
    model = create_model("drnet", **json.loads(TINY_DRNET))
    with pytest.raises(ValueError, match="it holds a mobilenetv2, not a DRNet"):
        warm_start(model, str(tmp_path / "mnv2"))


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content", [b"", b"PK\x03\x04 truncated zip", pickle.dumps({"model": 1}), _saved({"model": torch.zeros(1)})]
)
def test_resume_refuses_an_unreadable_state(
    content: bytes, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    assert main(_command(data_root, tmp_path, "--resume")[3:]) == 2
    err = capsys.readouterr().err
    assert "not a readable drnets training state" in err and "Traceback" not in err


def test_cost_scaling_charges_each_image_by_how_easy_the_model_finds_it(tiny_model, mixed_batch) -> None:
    """The loss equals CE + lambda * mean(cost_i * s_i), s_i the image's scale (mean 1) from its true-class probability."""
    from drnets.losses import training_loss
    from drnets.train import TrainConfig

    model = tiny_model().train()
    x = mixed_batch()
    labels = torch.arange(len(x)) % 10
    torch.manual_seed(0)
    logits, trace = model(x)
    cost = model.cost_table(28, 28).expected_flops_fraction(trace.gates).float()
    p_true = logits.detach().softmax(1)[torch.arange(len(x)), labels]
    rank = torch.empty(len(x)).index_put_((p_true.argsort(),), torch.arange(len(x), dtype=torch.float))
    expected = {
        "uniform": torch.ones(len(x)),
        "confidence": p_true / p_true.mean(),
        "rank": 2 * rank / (len(x) - 1),  # 0 for the least confident image, 2 for the most
        "rank-3": 1 + 3 * (2 * rank / (len(x) - 1) - 1),  # contrast 3: from -2 (pays for FLOPs) to 4
    }
    ce = torch.nn.functional.cross_entropy(logits, labels)
    for scaling, scale in expected.items():
        name, _, contrast = scaling.partition("-")
        cfg = TrainConfig(cost_weight=0.3, cost_scaling=name, cost_contrast=float(contrast or 1))
        loss, _ = training_loss(model, logits, trace, labels, cfg, 28, 28)
        torch.testing.assert_close(loss, ce + 0.3 * (cost * scale).mean(), msg=scaling)
        torch.testing.assert_close(scale.mean(), torch.tensor(1.0))  # lambda keeps its meaning
    assert len(set(p_true.tolist())) == len(x)  # distinct probabilities, so the three scalings differ
    priced = model.cost_table(28, 28).expected_flops_fraction(trace.gates, pool_price=2.0).float()
    loss, _ = training_loss(model, logits, trace, labels, TrainConfig(cost_weight=0.3, pool_price=2.0), 28, 28)
    torch.testing.assert_close(loss, ce + 0.3 * priced.mean())


def test_unknown_cost_scaling_is_refused() -> None:
    from drnets.train import TrainConfig

    with pytest.raises(ValueError, match="cost_scaling must be one of uniform, confidence, rank"):
        TrainConfig(cost_scaling="loss")
    with pytest.raises(ValueError, match="cost_contrast must be >= 0"):
        TrainConfig(cost_contrast=-1)


def test_difficulty_loss_pulls_costs_towards_a_spread_by_confidence_rank() -> None:
    from drnets.losses import difficulty_loss
    from drnets.train import TrainConfig

    labels = torch.zeros(3, dtype=torch.long)
    logits = torch.tensor([[5.0, 0, 0], [0, 0, 0], [0, 0, 5.0]])  # confident, unsure, wrong: easiest first
    # Targets relative to the mean cost: 0.7 (easiest), 1.0, 1.3 (hardest) for spread 0.3.
    on_target = torch.tensor([0.7, 1.0, 1.3]) * 0.25
    assert difficulty_loss(on_target, logits, labels, 0.3) == pytest.approx(0.0, abs=1e-12)
    flat = torch.full((3,), 0.25)
    assert difficulty_loss(flat, logits, labels, 0.3) == pytest.approx((0.3**2 + 0 + 0.3**2) / 3)
    cost = torch.tensor([0.2, 0.25, 0.3], requires_grad=True)
    difficulty_loss(cost, logits, labels, 0.3).backward()
    assert cost.grad[0] > 0 > cost.grad[2]  # the easy image is pushed cheaper, the hard one dearer
    with pytest.raises(ValueError, match="difficulty_spread"):
        TrainConfig(difficulty_spread=1.0)
    with pytest.raises(ValueError, match="difficulty_by"):
        TrainConfig(difficulty_by="pixel")


def test_class_difficulty_ranks_every_image_by_its_classs_mean_confidence() -> None:
    from drnets.losses import class_confidence_rank, difficulty_loss

    # Class 0: one confident and one unsure image (mean ~0.66); class 1 confident; class 2 wrong.
    logits = torch.tensor([[5.0, 0, 0], [0, 0, 0], [0, 5.0, 0], [0, 5.0, 0]])
    labels = torch.tensor([0, 0, 1, 2])
    assert class_confidence_rank(logits, labels).tolist() == [0.5, 0.5, 1.0, 0.0]
    # Targets 1, 1, 0.5, 1.5 (spread 0.5): costs on target give zero loss.
    on_target = torch.tensor([1.0, 1.0, 0.5, 1.5]) * 0.2
    assert difficulty_loss(on_target, logits, labels, 0.5, by="class") == pytest.approx(0.0, abs=1e-12)


def test_a_budgeted_drnet_trains_through_the_cli(data_root: Path, tmp_path: Path) -> None:
    """The sandwich step (three budgets a step, two of them distilled) end to end; the checkpoint keeps the budget scales."""
    config = json.dumps({**json.loads(TINY_DRNET), "router_input": "cell", "gate": "sigmoid", "open_bias": 2.0,
                         "budgeted": True, "threshold": 0.5})  # fmt: skip
    flags = ("--model-config", config, "--threshold", "0.5", "--cost-weight", "5", "--cost-warmup", "0.2",
             "--difficulty-spread", "0.5", "--limit", "48")  # fmt: skip
    metrics = _train(data_root, tmp_path, *flags)
    assert metrics["epoch"] == EPOCHS and metrics["train_loss"] == metrics["train_loss"]  # not NaN
    model = load_checkpoint(tmp_path / "model").model
    assert model.config.budgeted and model.cells[0].router.budget_scale is not None


def test_masked_execution_trains_a_budgeted_drnet_with_whole_batch_statistics(data_root: Path, tmp_path: Path) -> None:
    """--execution masked reaches every forward: same seed and data, but every branch's batch norm
    sees the whole batch, so the weights differ from a sparse run's; the choice is in args.json."""
    config = json.dumps({**json.loads(TINY_DRNET), "router_input": "cell", "gate": "sigmoid", "budgeted": True})
    flags = ("--model-config", config, "--threshold", "0.5", "--epochs", "1", "--limit", "48", "--no-sandwich")
    sparse = _train(data_root, tmp_path / "sparse", *flags)
    masked = _train(data_root, tmp_path / "masked", *flags, "--execution", "masked")
    assert masked["train_loss"] == masked["train_loss"] and masked["weights_sha256"] != sparse["weights_sha256"]
    assert json.loads((tmp_path / "masked" / "args.json").read_text())["execution"] == "masked"


def test_distillation_pulls_the_answers_towards_the_teachers() -> None:
    """label_loss mixes the cross-entropy with the teacher's softened answers; an answer equal to the
    teacher's costs (1 - w) x the cross-entropy only, and the gradient moves a student towards it."""
    labels = torch.tensor([0, 1, OUTLIER])
    teacher = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [9.0, -9.0, 0.0]])
    cfg = TrainConfig(teacher_weight=0.25, teacher_temperature=2.0)
    ce = F.cross_entropy(teacher[:2], labels[:2])
    assert torch.allclose(label_loss(ce, teacher, labels, teacher, cfg), 0.75 * ce)
    assert label_loss(ce, teacher, labels, None, cfg) is ce
    student = torch.zeros(3, 3, requires_grad=True)
    distillation_loss(student[:2], teacher[:2], 2.0).backward()
    assert (student.grad[:2].argmin(1) == teacher[:2].argmax(1)).all()  # descent raises the teacher's favourite
    assert distillation_loss(teacher, teacher, 2.0).abs() < 1e-6


def test_a_teacher_changes_what_the_student_learns(data_root: Path, reference_run: Path, tmp_path: Path) -> None:
    flags = ("--epochs", "1", "--limit", "48")
    _train(data_root, tmp_path / "plain", *flags)
    _train(data_root, tmp_path / "taught", *flags, "--teacher", str(reference_run / "model"), "--teacher-weight", "0.9")
    plain, taught = _weights(tmp_path / "plain"), _weights(tmp_path / "taught")
    assert any(not torch.equal(plain[k], taught[k]) for k in plain)
    recipe = json.loads((tmp_path / "taught" / "args.json").read_text())
    assert recipe["teacher"] == str(reference_run / "model") and recipe["teacher_weight"] == 0.9


def test_a_teacher_of_other_classes_is_refused(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = create_model("mobilenetv2", width_mult=0.25, num_classes=3)
    save_checkpoint(tmp_path / "mnv2", other, "mobilenetv2", ["a", "b", "c"], {})
    args = ["train", "--data-root", str(data_root), "--epochs", "1", "--limit", "16", "--out", str(tmp_path / "run"),
            "--no-progress", "--teacher", str(tmp_path / "mnv2")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--teacher" in err and "are not the data's" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model").exists()
