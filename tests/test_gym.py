"""ppo_ddp_gym.py: Gymnasium's autoreset at an episode's boundary, Atari's lives and games, seeds by global
env id, evaluation within its time limit, --num-envs 0 by CPU cores, a resume of envs that cannot save their
state, Atari on 2 ranks, bad ids. (2 ranks equal one process and the exact resume are in
test_invariants.py.)"""

import shutil
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import ROOT, explain, gif_frames, progress, python, torchrun

import ppo_ddp_gym as gp
import ppo_ddp_snake as snake

SUPPORT = str(ROOT / "tests" / "support")  # thirdparty_env.py, a user's own module
SMALL = ["--num-steps=32", "--num-minibatches=2", "--print-interval=0", "--dist-timeout=60"]


def random_steps(env: gp.GymEnv, steps: int, seed: int = 0) -> tuple[list, torch.Tensor, list]:
    """(observations, actions, (obs, reward, done, info) per step) of `steps` random actions from a reset."""
    actions = torch.randint(
        0, env.n_actions, (steps, env.num_envs), generator=torch.Generator().manual_seed(seed)
    )
    observations = [env.reset()]
    results = [env.step(a) for a in actions]
    return observations + [r[0] for r in results], actions, results


def test_autoreset_never_mixes_two_episodes():
    """Random steps of the vector env, replayed on plain Gymnasium envs of the same seeds: every transition is
    one of the replay's, across ~20 episode ends. The step that ends an episode keeps its own reward and the
    next obs is the next episode's first (Gymnasium's default autoreset would instead insert a step whose
    action is ignored and whose reward is 0, joining two episodes)."""
    env = gp.GymEnv(2, "cpu", 5, 0, gp.Args())
    observations, actions, results = random_steps(env, 200)
    refs = [gym.make("CartPole-v1") for _ in range(2)]
    obs = [r.reset(seed=s)[0] for r, s in zip(refs, env.seeds, strict=True)]
    ends = 0
    for t, (_, rewards, dones, _) in enumerate(results):
        np.testing.assert_array_equal(observations[t].numpy(), np.stack(obs), err_msg=f"step {t}")
        for i, ref in enumerate(refs):
            obs[i], reward, terminated, truncated, _ = ref.step(int(actions[t, i]))
            assert rewards[i] == reward and dones[i] == (terminated or truncated), (t, i)
            if terminated or truncated:
                obs[i], _ = ref.reset()
                ends += 1
    assert ends >= 15


def test_a_lost_life_ends_the_value_target_but_only_a_game_counts():
    """Breakout with random actions: every lost life is a done (the value target ends there), a game ends
    after exactly 5 of them, and the episode statistics count games (Run.count_episodes), with the game's own
    score (at least its clipped rewards) and its length in frames."""
    env = gp.GymEnv(2, "cpu", 3, 0, gp.Args(env_id="BreakoutNoFrameskip-v4"))
    _, _, results = random_steps(env, 600)
    done = torch.stack([r[2] for r in results])
    over = torch.stack([r[3]["game_over"] for r in results])
    rewards = torch.stack([r[1] for r in results])
    returns = torch.stack([r[3]["episode_return"] for r in results])
    lengths = torch.stack([r[3]["episode_length"] for r in results])
    counted = SimpleNamespace(episodes={k: torch.zeros(()) for k in ("episodes", *gp.EPISODE_METRICS)})
    for _, _, d, info in results:
        gp.Run.count_episodes(counted, d, info)
    games = int(over.sum())
    assert games >= 2 and int(counted.episodes["episodes"]) == games < int(done.sum())
    assert float(counted.episodes["episode_return"]) == float(returns[over].sum())
    assert float(counted.episodes["episode_length"]) == float(lengths[over].sum())
    for i in range(2):
        ends = over[:, i].nonzero().flatten().tolist()
        for start, end in zip([-1, *ends], ends, strict=False):
            assert int(done[start + 1 : end + 1, i].sum()) == 5, (i, start, end)  # Breakout's 5 lives
            assert returns[end, i] >= rewards[start + 1 : end + 1, i].sum()  # raw score >= clipped
            assert lengths[end, i] >= 4 * (end - start)  # frames: 4 per step, more at a reset


def test_each_env_is_seeded_by_its_global_id():
    """Env i of rank r (global id r * N + i) plays the episodes of env r * N + i of one process holding every
    env: a rank's envs never repeat another's."""
    one = gp.GymEnv(4, "cpu", 7, 0, gp.Args())
    ranks = [gp.GymEnv(2, "cpu", 7, 2 * r, gp.Args()) for r in range(2)]
    assert [e.env_ids for e in ranks] == [[0, 1], [2, 3]] and one.env_ids == [0, 1, 2, 3]
    actions = torch.randint(0, 2, (50, 4), generator=torch.Generator().manual_seed(1))
    first = [one.reset(), torch.cat([e.reset() for e in ranks])]
    assert torch.equal(*first) and not torch.equal(first[1][:2], first[1][2:])
    for a in actions:
        together, apart = one.step(a), [e.step(a[2 * r : 2 * r + 2]) for r, e in enumerate(ranks)]
        assert torch.equal(together[0], torch.cat([x[0] for x in apart]))


def test_evaluation_stops_at_its_time_limit(capsys):
    """Long games (an Atari game can run 27,000 steps) end a local evaluation at its time limit, half of
    --dist-timeout, so the ranks waiting for rank 0 never reach theirs: nothing is reported for games
    unfinished (random Pong games take seconds), and a warning says why. Without a limit all the episodes are
    counted."""
    policy = lambda env, obs: torch.randint(0, env.n_actions, (env.num_envs,))  # noqa: E731
    args = gp.Args(env_id="PongNoFrameskip-v4")
    assert gp.evaluate(policy, args, 2, limit=0.2) == {}
    assert (
        "the evaluation stopped at its time limit (0.2 s): 0 of 2 episodes ended" in capsys.readouterr().err
    )
    stats = gp.evaluate(policy, gp.Args(), 3)
    assert set(stats) == {"eval/episode_return", "eval/episode_length"} and stats["eval/episode_return"] > 5
    assert "warning" not in capsys.readouterr().err


def test_num_envs_0_counts_the_cpu_cores_for_envs_stepped_on_the_cpu(monkeypatch):
    """--num-envs 0: Gymnasium envs step on the CPU, one per core of a local rank's share (12 cores, 4 local
    ranks: 3, then the power of two below: 2); Snake's boards fill the device (256 per CPU thread)."""
    for mod in (gp, snake):
        monkeypatch.setattr(mod, "allowed_cpus", lambda: list(range(12)))
    cpu = torch.device("cpu")
    assert (gp.device_num_envs(cpu, 4), gp.device_num_envs(cpu, 16)) == (3, 1)
    assert gp.auto_num_envs(gp.device_num_envs(cpu, 4), gp.Args(total_timesteps=10**8), 4) == 2
    assert snake.device_num_envs(cpu, 4) == 256 * torch.get_num_threads()


def test_async_vector_envs_step_and_save_like_sync_ones():
    """--vector-mode async (a subprocess per env) gives the same episodes as sync, and its state saves and
    restores through the subprocesses."""
    envs = [gp.GymEnv(2, "cpu", 1, 0, gp.Args(vector_mode=mode)) for mode in ("sync", "async")]
    outs = [[e.reset()] for e in envs]
    actions = torch.randint(0, 2, (60, 2), generator=torch.Generator().manual_seed(0))
    for a in actions[:30]:
        for e, out in zip(envs, outs, strict=True):
            out.append(e.step(a)[0])
    saved = envs[1].state_dict()
    for a in actions[30:]:
        for e, out in zip(envs, outs, strict=True):
            out.append(e.step(a)[0])
    assert all(torch.equal(x, y) for x, y in zip(*outs, strict=True))
    envs[1].load_state_dict(saved)
    again = [envs[1].step(a)[0] for a in actions[30:]]
    assert all(torch.equal(x, y) for x, y in zip(again, outs[1][31:], strict=True))
    envs[1].vec.close()


@pytest.mark.slow
def test_atari_trains_on_two_ranks(tmp_path):
    """Breakout on 2 ranks: the Nature CNN trains, rank 0 evaluates a whole game and writes a GIF from the
    game's own frames, the checkpoints record that the envs' state is not in them, and the final model plays
    in the terminal (--render) from the same frames."""
    args = [*SMALL, "--env-id=BreakoutNoFrameskip-v4", "--num-envs=2", "--total-timesteps=256"]
    flags = [
        "--eval-interval=2",
        "--eval-episodes=1",
        "--checkpoint-interval=1",
        "--capture-video",
        "--run-name=a",
    ]
    p = torchrun("ppo_ddp_gym.py", *args, *flags, cwd=tmp_path, timeout=240)
    assert p.returncode == 0 and "parameters identical on all 2 ranks after 2 updates" in p.stdout, explain(p)
    run_dir = tmp_path / "runs/a"
    rows = progress(run_dir)  # too short for a training game to end: the evaluation plays a whole one
    assert [r["update"] for r in rows] == ["1", "2"] and float(rows[-1]["losses/entropy"]) > 1.0, rows
    assert float(rows[-1]["eval/episode_length"]) > 100 and rows[-1]["eval/episode_return"] != "", rows[-1]
    assert gif_frames(run_dir / "videos/update_00000002.gif") > 50
    ckpt = torch.load(run_dir / "checkpoints/update_00000002.pt", weights_only=False)
    assert [r["env"] for r in ckpt["ranks"]] == [None, None]
    assert ckpt["model"]["trunk.0.weight"].shape == (32, 4, 8, 8)
    final = str(run_dir / "final_model.pt")
    p = python("ppo_ddp_gym.py", "--eval-checkpoint", final, "--render", "--render-fps=100000", timeout=120)
    assert p.returncode == 0 and "1 greedy episodes: episode return per episode" in p.stdout, explain(p)
    assert p.stdout.count("\033[H\033[J") > 50 and "\033[38;2;" in p.stdout


@pytest.mark.slow
def test_a_resume_restarts_the_episodes_of_envs_that_cannot_save_them(tmp_path):
    """A third-party env (not in RESTORABLE): its checkpoints hold no env state, and a run resumed from one
    says so once and restarts its episodes, with everything else restored exactly: the resumed run's next
    checkpoint holds the uninterrupted run's counters, optimizer step count, minibatch and sampling RNG (the
    weights differ: other episodes)."""
    args = [*SMALL, "--env-id=thirdparty_env:Balance-v0", "--num-envs=4", "--total-timesteps=768"]
    args += ["--checkpoint-interval=1", "--eval-interval=0"]
    p = torchrun("ppo_ddp_gym.py", *args, "--run-name=full", cwd=tmp_path, timeout=180, PYTHONPATH=SUPPORT)
    assert p.returncode == 0, explain(p)
    full, cut = tmp_path / "runs/full", tmp_path / "runs/cut"
    shutil.copytree(full, cut)
    (cut / "checkpoints/update_00000003.pt").unlink()
    (cut / "final_model.pt").unlink()
    p = torchrun(
        "ppo_ddp_gym.py", *args, "--run-name=cut", "--resume", cwd=tmp_path, timeout=180, PYTHONPATH=SUPPORT
    )
    assert p.returncode == 0, explain(p)
    assert "resumed from runs/cut/checkpoints/update_00000002.pt at update 2" in p.stdout
    assert p.stdout.count("the environments cannot save their state: their episodes restart") == 1, explain(p)
    assert [r["update"] for r in progress(cut)] == ["1", "2", "3"]
    a, b = (torch.load(d / "checkpoints/update_00000003.pt", weights_only=False) for d in (full, cut))
    assert [r["env"] for r in a["ranks"] + b["ranks"]] == [None] * 4
    assert a["update"] == b["update"] == 3
    assert torch.equal(a["shared"]["minibatch_rng"], b["shared"]["minibatch_rng"])
    assert all(
        torch.equal(x["rng"]["torch"], y["rng"]["torch"]) for x, y in zip(a["ranks"], b["ranks"], strict=True)
    )
    steps = lambda c: [s["step"].item() for s in c["shared"]["optimizer"]["state"].values()]  # noqa: E731
    assert steps(a) == steps(b) == [3 * 4 * 2] * len(steps(a))  # 3 updates x 4 epochs x 2 minibatches
    assert not all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_bad_environments_are_refused_on_every_rank_before_anything_is_written(tmp_path):
    """A Box action space (pointed to the continuous script), an unknown id, a module that does not exist
    (with its pip install), an env whose package is missing, Graph observations: one error line, exit code 2
    (on both ranks under torchrun), no run directory."""
    p = torchrun("ppo_ddp_gym.py", "--env-id=Pendulum-v1", cwd=tmp_path, timeout=120)
    assert p.returncode != 0 and "exitcode: 2" in p.stderr, explain(p)  # torchrun's summary of its workers
    assert p.stderr.count("error: --env-id Pendulum-v1: the action space is Box") == 2, explain(p)
    assert "ppo_ddp_continuous.py trains those" in p.stderr
    cases = {
        "NoSuchEnv-v0": "error: --env-id NoSuchEnv-v0: Environment `NoSuchEnv` doesn't exist",
        "nosuchmodule:X-v0": "No module named 'nosuchmodule' (pip install nosuchmodule)",
        "thirdparty_env:NeedsMissing-v0": "missing: missing_engine is not installed, run `pip install",
        "thirdparty_env:Molecules-v0": "observations are Graph(Box(0.0, 1.0, (2,), float32), None); this",
    }
    for env_id, says in cases.items():
        p = python("ppo_ddp_gym.py", f"--env-id={env_id}", cwd=tmp_path, timeout=60, PYTHONPATH=SUPPORT)
        assert p.returncode == 2 and says in p.stderr and p.stderr.strip().count("\n") == 0, explain(p)
    assert not (tmp_path / "runs").exists()


def test_a_random_cartpole_episode_as_a_gif(tmp_path):
    """--capture-video from CartPole's own rgb_array frames (pygame draws them)."""
    p = python("ppo_ddp_gym.py", "--baseline=random", "--capture-video", "--eval-episodes=1", cwd=tmp_path)
    assert p.returncode == 0 and "video: baseline_random.gif" in p.stdout, explain(p)
    assert gif_frames(tmp_path / "baseline_random.gif") >= 8
