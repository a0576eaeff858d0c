"""A run continues on another number of ranks: stopped on 2 ranks, continued on 1, then on 2 again, every
update logged once with global steps continuous and the learning curve without a jump; each env continues its
own episode on the rank that now holds it; an elastic torchrun that loses one of its two agents goes on alone.
(Statistics kept alike on every rank carry over once: tests/test_continuous.py.)"""

import os
import signal
import socket

import pytest
import torch
from helpers import explain, finish, free_port, progress, start, torchrun, torchrun_cmd, wait_for, workers

SNAKE = [
    "--num-steps=8",
    "--num-minibatches=2",
    "--hidden-size=32",
    "--eval-interval=0",
    "--print-interval=1000",
]
SNAKE += ["--dist-timeout=60", "--checkpoint-interval=0", "--run-name=r"]


def snake(tmp_path, *flags, nproc=2, fault=""):
    """ppo_ddp_snake.py in tmp_path; with fault, PPO_DDP_FAULT (tests/support/faults/sitecustomize.py)."""
    extra = {"PPO_DDP_FAULT": fault} if fault else {}
    return torchrun("ppo_ddp_snake.py", *SNAKE, *flags, nproc=nproc, cwd=tmp_path, timeout=180, **extra)


def no_jump(rows: list[dict], at: int, key: str) -> bool:
    """Row `at`'s value of `key` moved from the row before no more than the rows before it moved, update to
    update (1.5 times their largest move): the curve goes on where it was."""
    values = [float(r[key]) for r in rows[: at + 1]]
    moves = [abs(b - a) for a, b in zip(values[:-1], values[1:-1], strict=False)]
    return abs(values[at] - values[at - 1]) <= 1.5 * max(moves) + 1e-9


@pytest.mark.slow
def test_two_ranks_then_one_then_two_again(tmp_path):
    """2 ranks x 16 envs stopped by a signal at update 4; `--num-envs 0` on 1 rank keeps the global batch (32
    envs, each going on with its episode), stopped again at update 8; finished on 2 ranks. Every update is
    logged once, the global steps go on without a gap, the losses of the first update after each change move
    no more than they moved from update to update before (a model, optimizer or schedule left behind would
    jump),
    and the weights are identical on both ranks at the end."""
    total = 12 * 16 * 8 * 2
    p = snake(tmp_path, "--num-envs=16", f"--total-timesteps={total}", fault="signal:1:4")
    assert p.returncode != 0 and "stopped by SIGUSR1 (1 of 2 ranks) at update 4" in p.stdout, explain(p)
    p = snake(tmp_path, "--num-envs=0", f"--total-timesteps={total}", "--resume", nproc=1, fault="signal:0:4")
    assert "written on 2 rank(s) x 16 envs, on 1 x 32 now: each env goes on with its episode" in p.stdout
    assert p.returncode != 0 and "stopped by SIGUSR1 (1 of 1 ranks) at update 8" in p.stdout, explain(p)
    p = snake(tmp_path, "--num-envs=0", f"--total-timesteps={total}", "--resume")
    assert p.returncode == 0 and "written on 1 rank(s) x 32 envs, on 2 x 16 now" in p.stdout, explain(p)
    assert "parameters identical on all 2 ranks after 12 updates" in p.stdout, explain(p)
    rows = progress(tmp_path / "runs/r")
    assert [int(r["update"]) for r in rows] == list(range(1, 13))
    assert [int(r["global_step"]) for r in rows] == [256 * u for u in range(1, 13)]
    for at in (4, 8):  # the first update after each change (0-based rows)
        for key in ("losses/value_loss", "losses/entropy", "losses/policy_loss"):
            assert no_jump(rows, at, key), (at, key, [r[key] for r in rows])


def test_each_env_goes_on_with_its_episode_on_the_rank_that_holds_it(tmp_path):
    """Stopped on 2 ranks at update 2, continued on 1 rank for two updates: every board whose episode did not
    end in them has taken exactly two rollouts' steps more than checkpoint 2 left the board of the same
    global id with (envs restarted instead would all have at most two rollouts' steps)."""
    total = 8 * 16 * 8 * 2
    p = snake(tmp_path, "--num-envs=16", f"--total-timesteps={total}", fault="signal:1:2")
    assert "stopped by SIGUSR1 (1 of 2 ranks) at update 2" in p.stdout, explain(p)
    p = snake(tmp_path, "--num-envs=0", f"--total-timesteps={total}", "--resume", nproc=1, fault="signal:0:2")
    assert "stopped by SIGUSR1 (1 of 1 ranks) at update 4" in p.stdout, explain(p)
    ckpts = tmp_path / "runs/r/checkpoints"
    before, after = (torch.load(ckpts / f"update_0000000{u}.pt", weights_only=False) for u in (2, 4))
    old = torch.cat([part["env"]["steps"] for part in before["ranks"]])  # ranks 0, 1: global ids 0-15, 16-31
    (part,) = after["ranks"]
    assert part["env_ids"].tolist() == list(range(32))
    went_on = part["env"]["steps"] > 16  # no episode ended in the two updates: counted on from checkpoint 2
    assert went_on.sum() >= 4, part["env"]["steps"]
    assert torch.equal(part["env"]["steps"][went_on], old[went_on] + 16)


@pytest.mark.slow
def test_an_elastic_torchrun_that_loses_an_agent_goes_on_alone(tmp_path):
    """Two torchrun agents on localhost (`--nnodes=1:2`, c10d rendezvous hosted by the first, one worker each,
    one working directory as a shared filesystem) train together; the second agent and its worker are killed
    (SIGKILL: a node gone). The first restarts its worker alone, which continues the run on 1 rank from the
    newest checkpoint, logs every update once with the global steps going on, and writes the final model."""
    port = free_port()
    launcher = (
        "--nnodes=1:2",
        "--max-restarts=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
    )
    launcher += ("--rdzv-id=el", "--rdzv-conf=last_call_timeout=2,join_timeout=60")
    total = 40 * 16 * 8 * 2
    flags = [*SNAKE, "--num-envs=16", f"--total-timesteps={total}", "--checkpoint-interval=4"]
    command = torchrun_cmd("ppo_ddp_snake.py", *flags, nproc=1, launcher_args=launcher)
    first = start(command, cwd=tmp_path)
    assert wait_for(lambda: port_open(port), 60, first), finish(first, 5)  # it hosts the rendezvous
    second = start(command, cwd=tmp_path)
    csv = tmp_path / "runs/r/progress.csv"
    assert wait_for(lambda: csv.exists() and len(progress(csv.parent)) >= 9, 120, first), finish(first, 5)
    for pid in [second.pid, *workers(second.pid, "ppo_ddp_snake.py")]:
        os.kill(pid, signal.SIGKILL)
    finish(second, 30)
    p = finish(first, 300)
    assert p.returncode == 0, explain(p)
    assert "written on 2 rank(s) x 16 envs, on 1 x 16 now: 32 envs before, 16 now" in p.stdout, explain(p)
    resumed = int(p.stdout.split("resumed from ")[1].split(" at update ")[1].split(",")[0])
    rows = progress(csv.parent)
    assert [int(r["update"]) for r in rows] == list(range(1, len(rows) + 1)), rows
    steps = [int(r["global_step"]) for r in rows]
    assert steps[resumed - 1] == 256 * resumed and steps[-1] == total  # 256 an update on 2 ranks, 128 on 1
    assert all(b - a == 128 for a, b in zip(steps[resumed - 1 :], steps[resumed:], strict=False))
    assert (csv.parent / "final_model.pt").exists() and "parameters identical on all 1 ranks" in p.stdout


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
