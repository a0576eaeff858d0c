"""DDP equals one process: one update on 2 ranks equals a plain PPO update on the whole batch, the same seed and
world size give bit-identical weights, and --precision bf16 and --compile train in sync (checkpoints without a
`module.` or `_orig_mod.` prefix)."""

import gc
import json
import os
import shutil

import pytest
import torch
import torch.distributed as dist
from equivalence import LR, SEED_PERM, make_problem, reference_update
from helpers import SMALL, explain, progress, run, torchrun, torchrun_cmd, weights
from torch.nn.parallel import DistributedDataParallel as DDP


@pytest.fixture(params=["ppo_ddp_snake.py", "ppo_ddp.py", "ppo_ddp_gym.py"])
def script(request):
    """Every script (the Gymnasium one on CartPole, its default): what depends on the environment and the agent
    as well (equivalence, exact resume)."""
    return request.param


def test_ddp_update_equals_a_plain_single_process_update(tmp_path, script):
    """One ppo_update on 2 ranks, each with its half of the batch, equals a plain PPO update of the tests' own
    (tests/equivalence.py) on the whole batch in one process: global minibatches, advantages normalized over
    them, gradients averaged (SGD without clipping: a sum would double every step), and the target-KL stop
    decided on the mean KL of both ranks. The target lies between the mean and the larger half's KL after the
    first epoch: a rank deciding on its own KL would stop there while the other goes on."""
    name = script.removesuffix(".py")
    first = reference_update(name, None)["half_kls"][0]
    target = (sum(first) / 2 + max(first)) / 2
    assert max(first) > 1.2 * min(first)  # the halves disagree enough for the target to tell them apart
    ref = reference_update(name, target)
    assert 4 < ref["steps"] < 16  # past the first epoch, stopped by the KL before the fourth ended
    out = tmp_path / "two.pt"
    p = run(torchrun_cmd("tests/ddp_equivalence_worker.py", name, str(out), repr(target)), 120)
    assert p.returncode == 0, explain(p)
    two = torch.load(out, weights_only=False)
    assert two["steps"] == ref["steps"]
    for k in ref["model"]:
        torch.testing.assert_close(two["model"][k], ref["model"][k], rtol=1e-4, atol=1e-6)
    assert two["stats"] == pytest.approx(ref["stats"], rel=1e-4, abs=1e-7)


def test_same_seed_and_world_size_give_bit_identical_weights(tmp_path, machinery):
    """Also: on CPU each rank keeps to its own CPU (config.json says which), and placement does not change
    the result (run b lets the OS place the ranks); a run of 3 updates warns that it is too short to learn. One
    script: Snake's determinism shows in its resume and elastic tests, which end bit-identical to a fresh run."""
    args = [*SMALL, "--total-timesteps=12288", "--checkpoint-interval=0"]
    for name, flags in (("a", []), ("b", ["--no-pin-cpus"])):
        p = torchrun(machinery, *args, f"--run-name={name}", *flags, cwd=tmp_path, timeout=180)
        assert p.returncode == 0, explain(p)
        assert p.stderr.count("warning: only 3 updates") == 1, explain(p)
    wa, wb = weights(tmp_path / "runs/a/final_model.pt"), weights(tmp_path / "runs/b/final_model.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) >= 2:
        placed = [
            [r["cpus"] for r in json.loads((tmp_path / f"runs/{n}/config.json").read_text())["ranks"]] for n in "ab"
        ]
        half = len(allowed) // 2
        assert placed[0] == [allowed[:half], allowed[half : 2 * half]]  # disjoint shares
        assert placed[1] == [allowed, allowed]


def test_bf16_autocast_trains_on_two_ranks_with_identical_weights(tmp_path, machinery):
    """--precision bf16 (forwards under autocast, losses and weights in fp32) trains and stays in sync, and the
    flag takes effect: the same run in fp32 ends with other weights, though not far from them. With the LSTM
    agent, whose memory is kept in fp32 between the autocast forwards."""
    args = [*SMALL, "--agent=lstm", "--total-timesteps=8192", "--checkpoint-interval=0"]
    for precision in ("bf16", "fp32"):
        p = torchrun(machinery, *args, f"--precision={precision}", f"--run-name={precision}", cwd=tmp_path, timeout=180)
        assert p.returncode == 0 and "parameters identical on all 2 ranks after 2 updates" in p.stdout, explain(p)
    w, w32 = weights(tmp_path / "runs/bf16/final_model.pt"), weights(tmp_path / "runs/fp32/final_model.pt")
    assert all(v.dtype == torch.float32 and v.isfinite().all() for v in w.values())
    assert all(float(r["losses/entropy"]) > 0 for r in progress(tmp_path / "runs/bf16"))
    assert not all(torch.equal(w[k], w32[k]) for k in w)
    assert all((w[k] - w32[k]).abs().max() < 0.05 for k in w)  # two updates of lr 2e-3 (1e-3) apart at most


def test_bf16_reaches_the_update(script):
    """One ppo_update of a fixed batch in a 1-process group: under --precision bf16 the weights move otherwise
    than in fp32 (the update's forward runs under autocast), and not by much."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        moved = {}
        for precision in ("bf16", "fp32"):
            mod, args, agent, batch = make_problem(script.removesuffix(".py"), None)
            args.precision = precision
            model, optimizer = DDP(agent), torch.optim.SGD(agent.parameters(), lr=LR)
            gen = torch.Generator().manual_seed(SEED_PERM)
            mod.ppo_update(model, [optimizer], batch, args, mod.schedules_at(args, 0.0), gen)
            moved[precision] = {k: v.clone() for k, v in agent.state_dict().items()}
            del model
    finally:
        gc.collect()  # DDP's reducer goes before the group
        dist.destroy_process_group()
    a, b = moved["bf16"], moved["fp32"]
    assert not all(torch.equal(a[k], b[k]) for k in a)
    torch.testing.assert_close(a, b, rtol=0.05, atol=0.01)


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compile_trains_on_two_ranks_and_checkpoints_have_no_prefix(tmp_path, machinery):
    """--compile wraps the rollout policy and the DDP model; checkpoints still hold the plain agent's keys. The
    flag takes effect: inductor generates kernels (into a cache directory of the test's own). One script: the
    wrapping is the machinery's, and both agents are MLPs of the same shape (test_bf16_reaches_the_update
    runs both agents' forwards under autocast)."""
    args = [*SMALL, "--total-timesteps=8192", "--checkpoint-interval=1", "--compile", "--run-name=c"]
    cache = tmp_path / "inductor"
    p = torchrun(machinery, *args, cwd=tmp_path, timeout=300, TORCHINDUCTOR_CACHE_DIR=str(cache))
    assert p.returncode == 0 and "parameters identical on all 2 ranks after 2 updates" in p.stdout, explain(p)
    assert len([f for f in cache.rglob("*.py") if "def call(" in f.read_text()]) >= 2, explain(p)
    for path in (tmp_path / "runs/c/checkpoints/update_00000002.pt", tmp_path / "runs/c/final_model.pt"):
        keys = list(weights(path))
        assert keys and not any(k.startswith(("module.", "_orig_mod.")) or "._orig_mod." in k for k in keys), keys


def test_logged_statistics_are_reduced_over_every_rank():
    """Rank 0 logs every rank's statistics (gathered by name): each episode metric as the sum over all ranks'
    episodes divided by their count (not rank 0's own, nor the mean of the ranks' means), the slowest rank's
    rollout and update times, and the ranks' mean explained variance."""
    import ppo_ddp_snake as snake

    stats = {"episodes": [1.0, 3.0], "rollout_s": [0.1, 0.3], "update_s": [0.5, 0.2], "explained_variance": [0.2, 0.6]}
    stats |= {k: [2.0, 18.0] for k in snake.EPISODE_METRICS}  # rank 0: 2 in 1 episode; rank 1: 18 in 3
    row = snake.reduce_stats(stats)
    assert row == pytest.approx(
        {**{tag: 5.0 for tag in snake.EPISODE_METRICS.values()}, "charts/episodes": 4.0}
        | {"time/rollout_s": 0.3, "time/update_s": 0.5, "losses/explained_variance": 0.4}
    )
    assert set(snake.reduce_stats({**stats, "episodes": [0.0, 0.0]})) == {  # no episode ended: no episode metric
        "charts/episodes",
        "time/rollout_s",
        "time/update_s",
        "losses/explained_variance",
    }
