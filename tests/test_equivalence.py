"""Runs that must end alike: the same seed and world size give bit-identical weights, --precision bf16 and
--compile train in sync (checkpoints without a `module.` or `_orig_mod.` prefix), and rank 0 logs statistics
reduced over every rank. That 2 ranks equal one process is in tests/test_invariants.py, for every script."""

import json
import os
import shutil

import pytest
import torch
from helpers import SMALL, explain, progress, torchrun, weights


@pytest.mark.slow
def test_same_seed_and_world_size_give_bit_identical_weights(tmp_path, operations):
    """Also: on CPU each rank keeps to its own CPU (config.json says which), and placement does not change
    the result (run b lets the OS place the ranks); a run of 3 updates warns that it is too short to learn.
    One script: Snake's determinism shows in its resume and elastic tests, which end bit-identical to a fresh
    run."""
    args = [*SMALL, "--total-timesteps=12288", "--checkpoint-interval=0"]
    for name, flags in (("a", []), ("b", ["--no-pin-cpus"])):
        p = torchrun(operations, *args, f"--run-name={name}", *flags, cwd=tmp_path, timeout=180)
        assert p.returncode == 0, explain(p)
        assert p.stderr.count("warning: only 3 updates") == 1, explain(p)
    wa, wb = weights(tmp_path / "runs/a/final_model.pt"), weights(tmp_path / "runs/b/final_model.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) >= 2:
        placed = [
            [r["cpus"] for r in json.loads((tmp_path / f"runs/{n}/config.json").read_text())["ranks"]]
            for n in "ab"
        ]
        half = len(allowed) // 2
        assert placed[0] == [allowed[:half], allowed[half : 2 * half]]  # disjoint shares
        assert placed[1] == [allowed, allowed]


@pytest.mark.slow
def test_bf16_autocast_trains_on_two_ranks_with_identical_weights(tmp_path, operations):
    """--precision bf16 (forwards under autocast, losses and weights in fp32) trains and stays in sync, and
    the flag takes effect: the same run in fp32 ends with other weights, though not far from them. With the
    LSTM agent, whose memory is kept in fp32 between the autocast forwards."""
    args = [*SMALL, "--agent=lstm", "--total-timesteps=8192", "--checkpoint-interval=0"]
    for precision in ("bf16", "fp32"):
        p = torchrun(
            operations,
            *args,
            f"--precision={precision}",
            f"--run-name={precision}",
            cwd=tmp_path,
            timeout=180,
        )
        assert p.returncode == 0 and "parameters identical on all 2 ranks after 2 updates" in p.stdout, (
            explain(p)
        )
    w, w32 = weights(tmp_path / "runs/bf16/final_model.pt"), weights(tmp_path / "runs/fp32/final_model.pt")
    assert all(v.dtype == torch.float32 and v.isfinite().all() for v in w.values())
    assert all(float(r["losses/entropy"]) > 0 for r in progress(tmp_path / "runs/bf16"))
    assert not all(torch.equal(w[k], w32[k]) for k in w)
    assert all((w[k] - w32[k]).abs().max() < 0.05 for k in w)  # two updates of lr 2e-3 (1e-3) apart at most


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.slow
def test_compile_trains_on_two_ranks_and_checkpoints_have_no_prefix(tmp_path, operations):
    """--compile wraps the rollout policy and the DDP model; checkpoints still hold the plain agent's keys.
    The flag takes effect: inductor generates kernels (into a cache directory of the test's own). One script
    (a compile costs half a minute here): the two lines that compile are the same in every script's loop."""
    args = [*SMALL, "--total-timesteps=8192", "--checkpoint-interval=1", "--compile", "--run-name=c"]
    cache = tmp_path / "inductor"
    p = torchrun(operations, *args, cwd=tmp_path, timeout=300, TORCHINDUCTOR_CACHE_DIR=str(cache))
    assert p.returncode == 0 and "parameters identical on all 2 ranks after 2 updates" in p.stdout, explain(p)
    assert len([f for f in cache.rglob("*.py") if "def call(" in f.read_text()]) >= 2, explain(p)
    for path in (tmp_path / "runs/c/checkpoints/update_00000002.pt", tmp_path / "runs/c/final_model.pt"):
        keys = list(weights(path))
        assert keys and not any(
            k.startswith(("module.", "_orig_mod.")) or "._orig_mod." in k for k in keys
        ), keys


def test_logged_statistics_are_reduced_over_every_rank():
    """Rank 0 logs every rank's statistics (gathered by name): each episode metric as the sum over all ranks'
    episodes divided by their count (not rank 0's own, nor the mean of the ranks' means), the slowest rank's
    rollout and update times, and the ranks' mean of every metric the loop reports (its tags hold a '/')."""
    import ppo_ddp_snake as snake

    stats = {"episodes": [1.0, 3.0], "rollout_s": [0.1, 0.3], "update_s": [0.5, 0.2], "losses/x": [0.2, 0.6]}
    stats |= {k: [2.0, 18.0] for k in snake.EPISODE_METRICS}  # rank 0: 2 in 1 episode; rank 1: 18 in 3
    row = snake.reduce_stats(stats)
    assert row == pytest.approx(
        {**{tag: 5.0 for tag in snake.EPISODE_METRICS.values()}, "charts/episodes": 4.0}
        | {"time/rollout_s": 0.3, "time/update_s": 0.5, "losses/x": 0.4}
    )
    no_episode = snake.reduce_stats({**stats, "episodes": [0.0, 0.0]})  # no episode ended: no episode metric
    assert set(no_episode) == {"charts/episodes", "time/rollout_s", "time/update_s", "losses/x"}
