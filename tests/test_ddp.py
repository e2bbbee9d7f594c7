"""Two CPU processes under torchrun (gloo) train exactly what one process computes by hand.

DDP with world size 2 and per-rank batch b takes, at every step, the mean of the two
ranks' gradients, each from its own b samples (batch norm normalises per rank). The same
step is reproduced here in one process: run rank 0's batch and rank 1's batch through one
model (each with its rank's RNG streams and batch-norm buffers), average the gradients,
step AdamW, and at the epoch end average the buffers as the trainer does. Averaging two
float gradients is exact in either order, so the weights must agree bit for bit.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakedata import TINY_DRNET, write_idx_dataset

from drnets.checkpoint import load_checkpoint
from drnets.data import load_dataset, normalization
from drnets.losses import training_loss
from drnets.router import RoutingPolicy
from drnets.train import (
    TrainConfig,
    build_model,
    build_optimizer,
    epoch_order,
    make_batch,
    seed_epoch,
    seed_everything,
    steps_per_epoch,
    temperature_at,
)

WORLD = 2


def reference_ddp(cfg: TrainConfig, world: int) -> dict[str, torch.Tensor]:
    """The weights a ``world``-rank DDP run of ``cfg`` must end with, computed in one process."""
    data = load_dataset(cfg.data, "train", cfg.data_root).subset(cfg.limit)
    mean, std = normalization(cfg.data, data.images.shape[-1])
    seed_everything(cfg.seed, torch.device("cpu"))
    model = build_model(cfg, data)
    per_epoch = steps_per_epoch(len(data), world, cfg.batch_size)
    total = per_epoch * cfg.epochs
    optimizer, scheduler = build_optimizer(cfg, model, total)
    params = dict(model.named_parameters())
    rank_buffers = [{k: v.clone() for k, v in model.named_buffers()} for _ in range(world)]
    for epoch in range(cfg.epochs):
        gens, rng_states, orders = [], [], []
        for rank in range(world):
            gens.append(seed_epoch(cfg, epoch, rank))
            rng_states.append(torch.get_rng_state())
            orders.append(epoch_order(len(data), cfg.seed, epoch, rank, world))
        model.train()
        for i in range(per_epoch):
            temperature = temperature_at(epoch * per_epoch + i, total, cfg.tau_start, cfg.tau_end)
            policy = RoutingPolicy(cfg.threshold, temperature=temperature)
            grads = []
            for rank in range(world):
                torch.set_rng_state(rng_states[rank])
                for name, buffer in model.named_buffers():
                    buffer.copy_(rank_buffers[rank][name])
                x, y = make_batch(
                    data, orders[rank][i * cfg.batch_size : (i + 1) * cfg.batch_size], gens[rank], mean, std
                )
                logits, trace = model(x, policy)
                loss, _ = training_loss(model, logits, trace, y, cfg, *data.images.shape[1:3])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grads.append({name: p.grad for name, p in params.items()})
                rng_states[rank] = torch.get_rng_state()
                rank_buffers[rank] = {k: v.clone() for k, v in model.named_buffers()}
            for name, p in params.items():
                # DDP pre-divides each rank's gradient by the world size, then sums; a rank that
                # skipped the branch contributes zeros, and a branch no rank ran keeps no gradient.
                parts = [g[name] / world for g in grads if g[name] is not None]
                p.grad = None if not parts else sum(parts[1:], parts[0])
            optimizer.step()
            scheduler.step()
        for name, buffer in model.named_buffers():
            summed = rank_buffers[0][name].clone()
            for other in rank_buffers[1:]:
                summed += other[name]
            averaged = summed / world if buffer.is_floating_point() else summed // world
            buffer.copy_(averaged)
            for b in rank_buffers:
                b[name] = averaged.clone()
    return model.state_dict()


@pytest.mark.slow
def test_two_gloo_ranks_match_the_single_process_computation(tmp_path: Path) -> None:
    root = write_idx_dataset(tmp_path / "data", n_train=128, n_test=8)
    out = tmp_path / "run"
    flags = {"--data-root": str(root), "--limit": "96", "--batch-size": "16", "--epochs": "2", "--seed": "3",
             "--model-config": TINY_DRNET, "--out": str(out)}  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
               "-m", "drnets", "train", "--no-progress", *(v for kv in flags.items() for v in kv)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    # Every rank prints its final metrics: both ranks hold the same weights.
    finals = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(finals) == WORLD and len({f["weights_sha256"] for f in finals}) == 1

    # Rank 0 alone wrote the run folder: one log row per epoch, recording the world size.
    with open(out / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and rows[-1]["weights_sha256"] == finals[0]["weights_sha256"]
    checkpoint = load_checkpoint(out / "model")
    assert checkpoint.training["world_size"] == WORLD

    # The checkpoint equals the single-process computation of the same two-rank steps, bit for bit.
    cfg = TrainConfig(data_root=str(root), limit=96, batch_size=16, epochs=2, seed=3, model_overrides=TINY_DRNET)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # the ranks ran single-threaded; kernels may sum in another order otherwise
    try:
        expected = reference_ddp(cfg, WORLD)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    got = checkpoint.model.state_dict()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"{len(different)} tensors differ from the reference, e.g. {different[:3]}"
