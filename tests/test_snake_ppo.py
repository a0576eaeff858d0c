"""ppo_ddp_snake.py end to end: real torchrun jobs of 2 gloo processes, and the functions they train with."""

import json
import math

import pytest
import torch
from helpers import explain, gif_frames, progress, python, torchrun, wandb_records

import ppo_ddp_snake as snake

# 64 boards x 32 steps x 2 ranks = 4096 steps per update; 3 updates.
SMALL = [
    "--num-envs=64",
    "--num-steps=32",
    "--num-minibatches=2",
    "--hidden-size=32",
    "--total-timesteps=12288",
    "--checkpoint-interval=1",
    "--eval-interval=2",
    "--eval-episodes=4",
    "--print-interval=0",
]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One 2-rank training run shared by the tests below: 3 updates, a checkpoint after each, tracked by wandb
    (offline, into the run's working directory)."""
    cwd = tmp_path_factory.mktemp("snake")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(cwd)}
    p = torchrun(
        "ppo_ddp_snake.py", *SMALL, "--run-name=t", "--track", "--capture-video", cwd=cwd, timeout=240, **env
    )
    assert p.returncode == 0, explain(p)
    return cwd, cwd / "runs" / "t", p


def test_two_ranks_train_identical_weights_and_complete_run_dir(ddp_run):
    _, run_dir, p = ddp_run
    assert "parameters identical on all 2 ranks after 3 updates" in p.stdout, explain(p)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["world_size"] == 2 and config["num_updates"] == 3 and config["global_batch_size"] == 4096
    rows = progress(run_dir)
    assert [int(r["update"]) for r in rows] == [1, 2, 3]
    assert [int(r["global_step"]) for r in rows] == [4096, 8192, 12288]  # every rank's steps count
    tags = [*snake.EPISODE_METRICS.values(), *(f"eval/{k}" for k in snake.EPISODE_METRICS), "charts/SPS"]
    losses = [f"losses/{k}" for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac")]
    assert set(tags + losses + ["charts/learning_rate", "time/rollout_s", "time/update_s"]) <= set(rows[0])
    assert all(float(r["losses/entropy"]) > 0 and float(r["charts/SPS"]) > 0 for r in rows)
    assert rows[1]["eval/apples"] != "" and rows[0]["eval/apples"] == ""  # eval every 2 updates
    lr = snake.Args().learning_rate  # the default schedule, linear: lr * (1 - p)
    assert float(rows[0]["charts/learning_rate"]) == pytest.approx(lr)
    assert float(rows[2]["charts/learning_rate"]) == pytest.approx(lr * (1 - 8192 / 12288))
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert sorted(f.name for f in (run_dir / "checkpoints").iterdir()) == [
        "update_00000001.pt",
        "update_00000002.pt",
        "update_00000003.pt",
    ]
    assert (run_dir / "final_model.pt").exists()


def offline_wandb_run(cwd) -> tuple[dict, list[dict], list[int]]:
    """The config, the history rows and the exit codes of the one offline wandb run under cwd/wandb."""
    runs = list((cwd / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs  # rank 0 alone makes one
    records = {}
    for r in wandb_records(runs[0]):
        records.setdefault(r.WhichOneof("record_type"), []).append(r)
    config = {item.key: json.loads(item.value_json) for item in records["run"][0].run.config.update}
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records["history"]
    ]
    return config, history, [r.exit.exit_code for r in records.get("exit", [])]


def test_track_logs_the_config_and_every_update_into_one_wandb_run(ddp_run):
    """--track (WANDB_MODE=offline): one wandb run, by rank 0, holding the config and every update's metrics,
    finished with exit code 0."""
    config, history, exits = offline_wandb_run(ddp_run[0])
    assert config["num_envs"] == 64 and config["world_size"] == 2 and config["track"] is True
    assert [h["global_step"] for h in history] == [4096, 8192, 12288]
    assert all("snake/apples" in h and "losses/entropy" in h for h in history)
    assert exits == [0]


@pytest.mark.slow
def test_track_finishes_the_wandb_run_when_another_rank_fails(tmp_path):
    """Rank 1 fails at update 2: rank 0 finishes its wandb run with exit code 1 and keeps update 1's metrics,
    although the launcher's SIGTERM reaches it meanwhile (a finish cut short loses the whole run file)."""
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "PPO_DDP_FAULT": "1:2"}
    p = torchrun("ppo_ddp_snake.py", *SMALL, "--run-name=w", "--track", cwd=tmp_path, timeout=240, **env)
    assert p.returncode != 0, explain(p)
    config, history, exits = offline_wandb_run(tmp_path)
    assert config["num_envs"] == 64 and [h["global_step"] for h in history] == [4096] and exits == [1], (
        explain(p)
    )


def test_checkpoint_has_no_prefix_and_loads_in_one_process(ddp_run):
    _, run_dir, _ = ddp_run
    for path in [run_dir / "final_model.pt", run_dir / "checkpoints" / "update_00000003.pt"]:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
        agent = snake.Agent(tuple(ckpt["obs_shape"]), ckpt["n_actions"], snake.Args(**ckpt["args"]))
        agent.load_state_dict(ckpt["model"])  # strict: every key matches
    ckpt = torch.load(run_dir / "checkpoints" / "update_00000003.pt", map_location="cpu", weights_only=False)
    assert ckpt["update"] == 3 and len(ckpt["ranks"]) == 2
    final = torch.load(run_dir / "final_model.pt", map_location="cpu", weights_only=False)
    assert all(torch.equal(final["model"][k], v) for k, v in ckpt["model"].items())


def test_capture_video_writes_a_gif_per_evaluation_and_beside_a_checkpoint(ddp_run):
    """--capture-video: rank 0's evaluation (every 2 updates) writes runs/t/videos/update_00000002.gif, a
    multi-frame GIF of a greedy episode; --eval-checkpoint PATH --capture-video writes one beside PATH."""
    _, run_dir, _ = ddp_run
    assert [v.name for v in (run_dir / "videos").iterdir()] == ["update_00000002.gif"]
    assert gif_frames(run_dir / "videos/update_00000002.gif") > 1
    p = python(
        "ppo_ddp_snake.py",
        "--eval-checkpoint",
        str(run_dir / "final_model.pt"),
        "--capture-video",
        timeout=120,
    )
    assert p.returncode == 0 and f"video: {run_dir / 'final_model.gif'}" in p.stdout, explain(p)
    assert gif_frames(run_dir / "final_model.gif") > 1


@pytest.mark.parametrize("render", [False, True])
def test_eval_checkpoint(ddp_run, render):
    _, run_dir, _ = ddp_run
    args = ["--eval-checkpoint", str(run_dir / "final_model.pt"), "--eval-episodes=3"]
    p = python("ppo_ddp_snake.py", *args, *(["--render", "--render-fps=1000"] if render else []), timeout=120)
    assert p.returncode == 0, explain(p)
    greedy = "1 greedy episodes" if render else "3 greedy episodes"
    assert greedy in p.stdout and "apples per episode" in p.stdout
    assert ("@" in p.stdout and "#" in p.stdout) == render  # frames drawn only with --render


def test_eval_checkpoint_of_an_older_version(ddp_run, tmp_path):
    """A final_model.pt written before a flag was dropped (Snake's one-value --loss) still plays:
    --eval-checkpoint rebuilds Args from the fields this version has."""
    _, run_dir, _ = ddp_run
    ckpt = torch.load(run_dir / "final_model.pt", map_location="cpu", weights_only=False)
    ckpt["args"]["loss"] = "ppo"
    torch.save(ckpt, tmp_path / "older.pt")
    p = python(
        "ppo_ddp_snake.py", "--eval-checkpoint", str(tmp_path / "older.pt"), "--eval-episodes=2", timeout=120
    )
    assert p.returncode == 0 and "2 greedy episodes: apples per episode" in p.stdout, explain(p)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-minibatches=3", "--num-envs=64"], "not divisible by --num-minibatches 3"),
        (["--total-timesteps=100", "--num-envs=64"], "below one update's global batch"),
        (["--num-steps=-1"], "--num-steps must be positive"),
        (["--board-size=2", "--num-envs=64"], "--board-size must be in [3, 15]"),
        (["--learning-rate=0"], "--learning-rate must be positive"),
        (["--render"], "--render needs --eval-checkpoint"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(flags, message):
    p = python("ppo_ddp_snake.py", *flags, timeout=60)
    assert p.returncode == 2, explain(p)
    assert p.stderr.startswith("error: ") and message in p.stderr and p.stderr.strip().count("\n") == 0


def test_bad_arguments_under_torchrun_stop_every_rank(tmp_path):
    p = torchrun(
        "ppo_ddp_snake.py", "--num-envs=64", "--run-name=none", "--resume", cwd=tmp_path, timeout=120
    )
    assert p.returncode != 0 and "exitcode: 2" in p.stderr, explain(p)
    assert p.stderr.count("error: --resume: no usable checkpoint in runs/none/checkpoints") == 2
    assert not (tmp_path / "runs" / "none" / "progress.csv").exists()


def test_gae_returns_are_advantages_plus_rollout_values():
    T, N = 5, 3
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(T, N, generator=g), torch.randn(T, N, generator=g)
    dones = (torch.rand(T, N, generator=g) < 0.3).float()
    next_value, next_done = torch.randn(N, generator=g), torch.tensor([0.0, 1.0, 0.0])
    adv, ret = snake.compute_gae(rewards, values, dones, next_value, next_done, 0.9, 0.8)
    assert torch.equal(ret, adv + values)
    for n in range(N):  # the textbook recursion, one board at a time
        gae = 0.0
        for t in reversed(range(T)):
            nd = 1.0 - (next_done[n] if t == T - 1 else dones[t + 1, n])
            nv = next_value[n] if t == T - 1 else values[t + 1, n]
            delta = rewards[t, n] + 0.9 * nv * nd - values[t, n]
            gae = delta + 0.9 * 0.8 * nd * gae
            assert adv[t, n].item() == pytest.approx(float(gae), abs=1e-6)


@pytest.mark.parametrize("schedule, mid", [("linear", 0.5), ("cosine", 0.5), ("constant", 1.0)])
def test_learning_rate_schedules(schedule, mid):
    args = snake.Args(learning_rate=1e-3, lr_schedule=schedule)
    assert snake.learning_rate_at(args, 0.0) == pytest.approx(1e-3)
    assert snake.learning_rate_at(args, 0.5) == pytest.approx(1e-3 * mid)
    assert snake.learning_rate_at(args, 1.0) == pytest.approx(
        1e-3 if schedule == "constant" else 0.0, abs=1e-12
    )
    cosine = snake.Args(learning_rate=1e-3, lr_schedule="cosine")
    assert snake.learning_rate_at(cosine, 0.25) == pytest.approx(1e-3 * (1 + math.cos(math.pi / 4)) / 2)


@pytest.mark.slow
def test_ddp_training_at_the_defaults_learns(tmp_path):
    """Bounded by steps, not time: 2 ranks at the default hyperparameters (the boards the default run resolves
    to on 2 CPU ranks, 256 each) for 2.1 M steps, 32 updates, the schedule spread over them: apples per
    episode rise from random play's ~0.1 to above 1.5 (3.4 on the machine this was written on)."""
    args = ["--num-envs=256", "--total-timesteps=2097152", "--eval-interval=0", "--checkpoint-interval=0"]
    p = torchrun("ppo_ddp_snake.py", *args, "--run-name=learn", cwd=tmp_path, timeout=300)
    assert p.returncode == 0, explain(p)
    rows = progress(tmp_path / "runs" / "learn")
    first, last = float(rows[0]["snake/apples"]), float(rows[-1]["snake/apples"])
    assert len(rows) == 32 and first < 0.3 and last > 1.5, (first, last)
