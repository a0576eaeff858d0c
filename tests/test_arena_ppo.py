"""ppo_ddp.py: each loss under torchrun with 2 gloo processes, the unused-parameter guard, schedules, the
policy's config, optimizers, evaluation modes, and the guards against silent regressions (seed 004)."""

import json
import math
import re

import pytest
import torch
from crafted import arena_room
from helpers import explain, gif_frames, progress, python, torchrun

import ppo_ddp as arena

# 64 rooms x 32 steps x 2 ranks = 4096 steps per update; 4 updates;
# every room's episode ends with each update.
SMALL = [
    "--num-envs=64",
    "--num-steps=32",
    "--episode-length=32",
    "--num-minibatches=2",
    "--hidden-size=32",
    "--total-timesteps=16384",
    "--print-interval=0",
    "--checkpoint-interval=2",
    "--eval-interval=2",
    "--eval-episodes=4",
]


@pytest.mark.parametrize("loss", ["ppo", "grpo", "action_supervised"])
def test_each_loss_trains_on_two_ranks_with_identical_weights(tmp_path, loss):
    p = torchrun("ppo_ddp.py", *SMALL, f"--loss={loss}", "--run-name=r", cwd=tmp_path, timeout=240)
    assert p.returncode == 0, explain(p)
    assert "parameters identical on all 2 ranks after 4 updates" in p.stdout
    unused = "none" if loss == "ppo" else "critic.weight, critic.bias"  # --find-unused auto follows the probe
    assert (
        f"unused parameters: {unused}, so find_unused_parameters={loss != 'ppo'} (--find-unused auto)"
        in p.stdout
    )
    if loss == "ppo":  # no PyTorch warning that find_unused_parameters=True found nothing unused
        assert "find_unused_parameters=True was specified" not in p.stderr, p.stderr
    rows = progress(tmp_path / "runs/r")
    assert [int(r["global_step"]) for r in rows] == [4096, 8192, 12288, 16384]
    assert all(float(r["losses/entropy"]) > 0 for r in rows)
    # the episodes of both ranks, reduced before logging
    assert [r["charts/episodes"] for r in rows] == ["128.0"] * 4
    assert (float(rows[-1]["losses/value_loss"]) > 0) == (loss == "ppo")  # only ppo trains the critic
    assert rows[1]["eval/hearts"] != ""
    ckpt = torch.load(tmp_path / "runs/r/checkpoints/update_00000004.pt", weights_only=False)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])


def test_unused_critic_without_a_fix_fails_fast_on_every_rank(tmp_path):
    p = torchrun(
        "ppo_ddp.py", *SMALL, "--loss=grpo", "--no-find-unused", "--run-name=f", cwd=tmp_path, timeout=120
    )
    assert p.returncode != 0 and "exitcode: 2" in p.stderr, explain(p)
    message = "error: the loss gives no gradient to critic.weight, critic.bias, which DDP refuses"
    assert (
        p.stderr.count(message) == 2 and p.stderr.count("fix: --find-unused, or a loss that uses every") == 2
    )
    assert not (tmp_path / "runs/f/progress.csv").exists()  # stopped before any heavy work


def test_the_hack_trains_without_find_unused(tmp_path):
    p = torchrun(
        "ppo_ddp.py",
        *SMALL,
        "--loss=action_supervised",
        "--no-find-unused",
        "--hack",
        "--run-name=h",
        "--eval-mode=none",
        cwd=tmp_path,
        timeout=240,
    )
    assert p.returncode == 0, explain(p)
    assert "unused parameters: none, so find_unused_parameters=False (--find-unused off)" in p.stdout
    assert "parameters identical on all 2 ranks after 4 updates" in p.stdout
    assert all(r["eval/hearts"] == "" for r in progress(tmp_path / "runs/h"))  # --eval-mode none


def test_async_evaluation_logs_into_progress_and_tensorboard(tmp_path):
    """Also --capture-video: each separate evaluation's GIF (a multi-frame episode) goes to runs/a/videos/."""
    args = [*SMALL, "--eval-mode=async", "--capture-video", "--run-name=a"]
    p = torchrun("ppo_ddp.py", *args, cwd=tmp_path, timeout=240)
    assert p.returncode == 0, explain(p)
    results = sorted((tmp_path / "runs/a/eval").glob("update_*.json"))
    assert [r.name for r in results] == ["update_00000002_step_8192.json", "update_00000004_step_16384.json"]
    assert set(json.loads(results[0].read_text())) >= {"eval/hearts", "eval/episode_return"}
    assert progress(tmp_path / "runs/a")[-1]["eval/hearts"] != ""  # the last row waited for the last one
    videos = sorted((tmp_path / "runs/a/videos").iterdir())
    assert [v.name for v in videos] == ["update_00000002.gif", "update_00000004.gif"]
    assert all(gif_frames(v) > 1 for v in videos)


@pytest.mark.parametrize("fault", ["eval-crash", "eval-hang"])
@pytest.mark.slow
def test_a_failing_or_hung_async_evaluation_neither_crashes_rank_0_nor_loses_the_final_model(tmp_path, fault):
    """The evaluation process crashes, or hangs past the last update's wait (half of --dist-timeout): rank 0
    reports it, logs the training rows and writes final_model.pt. A torn JSON lying in eval/ (what a reader
    of a file written in place could meet) is never read: rank 0 reads only the results of processes that
    have ended, which write atomically."""
    eval_dir = tmp_path / "runs/e/eval"
    eval_dir.mkdir(parents=True)
    (eval_dir / "update_00000001_step_4096.json").write_text('{"eval/hea')
    timeout = 60 if fault == "eval-crash" else 16  # a crash gets time to start and fail; a hang waits 8 s
    flags = ["--eval-mode=async", "--run-name=e", f"--dist-timeout={timeout}"]
    p = torchrun("ppo_ddp.py", *SMALL, *flags, cwd=tmp_path, timeout=240, PPO_DDP_FAULT=fault)
    assert p.returncode == 0, explain(p)
    assert (tmp_path / "runs/e/final_model.pt").is_file()
    rows = progress(tmp_path / "runs/e")
    assert [int(r["update"]) for r in rows] == [1, 2, 3, 4] and all(r["eval/hearts"] == "" for r in rows)
    code = "1" if fault == "eval-crash" else "-9"  # -9: killed after the wait
    for step in (8192, 16384):
        assert f"warning: the evaluation at step {step} failed (exit code {code})" in p.stderr, explain(p)
    if fault == "eval-crash":
        assert (
            "injected fault in the evaluation process"
            in (eval_dir / "update_00000002_step_8192.log").read_text()
        )


@pytest.mark.parametrize(
    "kind, mid",
    [
        ("constant", 1.0),
        ("linear", 0.55),
        ("cosine", 0.55),
        ("exponential", math.sqrt(0.1)),
        ("logarithmic", 1 - 0.9 * math.log1p(5) / math.log1p(10)),
    ],
)
def test_schedules_at_start_middle_end(kind, mid):
    assert arena.schedule(kind, 1.0, 0.1, 0.0) == pytest.approx(1.0)
    assert arena.schedule(kind, 1.0, 0.1, 0.5) == pytest.approx(mid)
    assert arena.schedule(kind, 1.0, 0.1, 1.0) == pytest.approx(1.0 if kind == "constant" else 0.1)


def test_learning_rate_follows_its_schedule_in_progress_csv(tmp_path):
    p = torchrun("ppo_ddp.py", *SMALL, "--eval-mode=none", "--run-name=s", cwd=tmp_path, timeout=240)
    assert p.returncode == 0, explain(p)
    args = arena.Args()
    for r in progress(tmp_path / "runs/s"):
        progress_p = (int(r["global_step"]) - 4096) / 16384
        assert float(r["charts/learning_rate"]) == pytest.approx(
            arena.schedule("cosine", args.learning_rate, args.lr_final, progress_p)
        )
        assert float(r["schedule/clip_coef"]) == pytest.approx(
            arena.schedule("logarithmic", args.clip_coef, args.clip_final, progress_p)
        )
    assert float(progress(tmp_path / "runs/s")[0]["charts/learning_rate"]) == pytest.approx(
        args.learning_rate
    )


def test_defaults_keep_shaped_rewards_and_uncapped_hearts():
    args = arena.Args()
    assert args.reward_shaping and args.heart_max == 0 and args.lr_schedule != "constant"
    env = arena.Env(1, "cpu", 0, 0, args)
    arena_room(env, 0, agent=(5, 5), objects=[(env.MINE, 5, 6, 0)])
    _, reward, _, _ = env.step(torch.tensor([env.RIGHT]))
    assert reward.item() == pytest.approx(args.ore_reward)  # shaping reaches the environment


def test_policy_gets_its_config_and_clips_its_weights():
    args = arena.Args(hidden_size=24, clip_range=0.05)
    agent = arena.Agent((10,), 5, args)
    assert agent.trunk[0].out_features == 24 and agent.clip_range == 0.05
    with torch.no_grad():
        agent.trunk[0].weight.fill_(1.0)
    agent.clip_weights()
    assert agent.trunk[0].weight.max().item() == pytest.approx(0.05)
    off = arena.Agent((10,), 5, arena.Args(clip_range=0.0))
    before = off.trunk[0].weight.clone()
    off.clip_weights()
    assert torch.equal(before, off.trunk[0].weight)


def test_muon_takes_the_hidden_matrices_and_adam_the_rest():
    agent = arena.Agent((10,), 5, arena.Args(hidden_size=16))
    muon, adam = arena.make_optimizers(agent, arena.Args(optimizer="muon"))
    assert isinstance(muon, torch.optim.Muon) and isinstance(adam, torch.optim.Adam)
    hidden = {id(agent.trunk[0].weight), id(agent.trunk[2].weight)}
    assert {id(p) for g in muon.param_groups for p in g["params"]} == hidden
    assert len([p for g in adam.param_groups for p in g["params"]]) == len(list(agent.parameters())) - 2


def test_returns_are_advantages_plus_rollout_values():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    dones = (torch.rand(6, 4, generator=g) < 0.3).float()
    adv, ret = arena.compute_gae(
        rewards, values, dones, torch.randn(4, generator=g), torch.zeros(4), 0.99, 0.95
    )
    assert torch.equal(ret, adv + values)


def test_grpo_normalizes_within_each_rollout_step(one_process_group):
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(5, 32, generator=g)
    adv = arena.grpo_advantages(rewards, torch.zeros(5, 32), torch.zeros(32), 0.9)
    torch.testing.assert_close(adv.mean(1), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(adv.std(1), torch.ones(5), atol=1e-4, rtol=0)


@pytest.mark.parametrize("baseline", ["random", "teacher"])
def test_baselines_play(baseline):
    p = python("ppo_ddp.py", f"--baseline={baseline}", "--eval-episodes=16", timeout=120)
    assert p.returncode == 0, explain(p)
    assert f"16 {baseline} episodes: hearts per episode" in p.stdout


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-minibatches=3", "--num-envs=64"], "not divisible by --num-minibatches 3"),
        (
            ["--lr-schedule=exponential", "--lr-final=0"],
            "exponential schedule of learning_rate needs positive",
        ),
        (["--room-size=3", "--num-mines=9"], "do not fit"),
        (["--clip-range=-1"], "--clip-range >= 0"),
        (["--episode-length=0"], "--episode-length must be positive"),
    ],
)
def test_bad_arguments_exit_2(flags, message):
    p = python("ppo_ddp.py", *flags, timeout=60)
    assert p.returncode == 2, explain(p)
    assert p.stderr.startswith("error: ") and message in p.stderr and p.stderr.strip().count("\n") == 0, (
        explain(p)
    )


def test_find_unused_flags_mean_on_and_off():
    aliases = arena.find_unused_aliases
    assert aliases(["--find-unused"]) == ["--find-unused=on"]
    assert aliases(["--find-unused", "--hack"]) == ["--find-unused=on", "--hack"]
    assert aliases(["--find-unused", "auto"]) == ["--find-unused", "auto"]
    assert aliases(["--no-find-unused", "--seed=2"]) == ["--find-unused=off", "--seed=2"]


def test_bad_arguments_unknown_loss_is_refused_by_the_parser():
    p = python("ppo_ddp.py", "--loss=nope", timeout=60)
    assert p.returncode == 2 and "invalid choice 'nope' for argument '--loss'" in p.stderr, explain(p)


def test_muon_trains_and_checkpoint_plays_with_and_without_render(tmp_path):
    """One process: a short run with --optimizer muon and weight clipping, then its final model replayed."""
    p = python(
        "ppo_ddp.py",
        *SMALL,
        "--optimizer=muon",
        "--clip-range=0.3",
        "--eval-mode=none",
        "--run-name=m",
        cwd=tmp_path,
        timeout=180,
    )
    assert p.returncode == 0, explain(p)
    final = tmp_path / "runs/m/final_model.pt"
    weights = torch.load(final, weights_only=False)["model"]
    assert max(w.abs().max().item() for k, w in weights.items() if k.endswith("weight")) <= 0.3 + 1e-6
    p = python("ppo_ddp.py", "--eval-checkpoint", str(final), "--eval-episodes=3", timeout=120)
    assert p.returncode == 0 and "3 greedy episodes: hearts per episode" in p.stdout, explain(p)
    p = python("ppo_ddp.py", "--eval-checkpoint", str(final), "--render", "--render-fps=10000", timeout=120)
    assert p.returncode == 0 and "1 greedy episodes" in p.stdout and "@" in p.stdout, explain(p)


@pytest.mark.slow
def test_ddp_training_at_the_defaults_learns(tmp_path):
    """Bounded by steps, not time: 2 ranks at the default hyperparameters (the rooms the default run resolves
    to on 2 CPU ranks, 256 each) for 1.05 M steps, 32 updates, every schedule spread over them: hearts per
    episode rise from random play's level (0.48) to above 1.2 (1.64 on the machine this was written on; the
    default 40 M-step run reaches 14). Episodes last 256 steps, so the first finish in update 4."""
    args = ["--num-envs=256", "--total-timesteps=1048576", "--eval-interval=0", "--checkpoint-interval=0"]
    p = torchrun("ppo_ddp.py", *args, "--run-name=learn", cwd=tmp_path, timeout=300)
    assert p.returncode == 0, explain(p)
    hearts = [float(r["arena/hearts"]) for r in progress(tmp_path / "runs" / "learn") if r["arena/hearts"]]
    assert len(hearts) == 8 and hearts[0] < 0.7 and hearts[-1] > 1.2, hearts


def test_console_table_shows_each_metrics_last_known_value_and_the_time_left(tmp_path):
    """Episodes of 48 steps, rollouts of 32: episodes end in updates 2 and 3, none in 1 and 4. The table says
    so in update 1, and in update 4 (an empty progress.csv cell) shows update 3's value; never `nan`. (Also:
    an explicit --find-unused wins over the probe.)"""
    args = [*SMALL, "--episode-length=48", "--eval-interval=0", "--find-unused", "--run-name=c"]
    p = torchrun("ppo_ddp.py", *args, cwd=tmp_path, timeout=240)
    assert p.returncode == 0, explain(p)
    assert "unused parameters: none, so find_unused_parameters=True (--find-unused on)" in p.stdout
    rows = progress(tmp_path / "runs/c")
    assert [r["arena/hearts"] != "" for r in rows] == [False, True, True, False]
    tables = re.split(r"^ +update \d+ *$", p.stdout, flags=re.M)[1:]  # each table's title line: "update N"
    hearts = [re.search(r"arena/hearts\s*│\s*([^│]+?)\s*│", t).group(1) for t in tables]
    assert hearts[0] == "no episode has ended yet" and hearts[3] == f"{float(rows[2]['arena/hearts']):.2f}", (
        hearts
    )
    assert len(tables) == 4 and "nan" not in p.stdout and all("time elapsed / left" in t for t in tables), (
        p.stdout
    )
