"""ppo_ddp_continuous.py: normalization statistics the same on every rank (a per-rank port is caught by the
equivalence test's one-process reference), kept across a resume of envs that cannot save their state, and
used frozen by every evaluation; environments refused with one line. (2 ranks equal one process with the
statistics merged, and the exact resume of MuJoCo's Hopper: tests/test_invariants.py.)"""

import shutil

import pytest
import torch
import tyro
from equivalence import ENT_COEF, LR, load, reference_run
from helpers import ROOT, explain, progress, python, run, torchrun, torchrun_cmd, weights

import ppo_ddp_continuous as cont

SCRIPT = "ppo_ddp_continuous.py"
SUPPORT = str(ROOT / "tests" / "support")  # thirdparty_env.py, a user's own module
SMALL = ["--num-envs=4", "--num-steps=8", "--num-minibatches=2", "--update-epochs=2", "--hidden-size=16"]
SMALL += ["--eval-interval=0", "--print-interval=1000", "--dist-timeout=60"]


def test_statistics_kept_per_rank_are_caught_by_the_one_process_reference(tmp_path):
    """--no-norm-sync (each rank its own statistics, as a port of CleanRL's wrappers to DDP would keep them):
    the ranks' statistics drift apart (logged), and two updates no longer equal the reference's one process
    holding every env (tests/support/equivalence.py), which merges them; the run with them merged does."""
    args = ["--num-envs=8", "--num-steps=8", "--num-minibatches=2", "--update-epochs=4", "--hidden-size=16"]
    args += ["--eval-interval=0", "--print-interval=1000", "--lr-schedule=constant", f"--learning-rate={LR}"]
    args += [f"--ent-coef={ENT_COEF}", "--max-grad-norm=1e6", "--total-timesteps=256", "--run-name=e"]
    worker = "tests/support/equivalence_worker.py"
    for sync in ("--norm-sync", "--no-norm-sync"):
        out = tmp_path / sync
        out.mkdir()
        p = run(torchrun_cmd(worker, SCRIPT, str(out), *args, sync), 120, cwd=out)
        assert p.returncode == 0, explain(p)
        rows = progress(out / "runs/e")
        ref = reference_run(SCRIPT, load(out), tyro.cli(cont.Args, args=[*args, sync]), 2, None)
        trained = weights(out / "runs/e/final_model.pt")
        close = all(torch.allclose(trained[k], ref["model"][k], rtol=1e-4, atol=1e-6) for k in trained)
        spread = float(rows[-1]["norm/obs_mean_spread"])
        if sync == "--norm-sync":
            assert close and spread == 0.0, spread
        else:
            assert not close and spread > 0.01, spread
            assert not any(k.startswith("obs_rms.") for k in trained)  # and the final model lacks them


def test_statistics_survive_a_resume_of_envs_that_cannot_save_their_state(tmp_path):
    """A third-party env (not in RESTORABLE): its checkpoints hold no env state, and a run resumed from one
    restarts its episodes, but the observations' and returns' statistics come back from the checkpoint, once
    and not once per rank: resumed on 1 rank (`--num-envs 0`: the 8 envs of 2), its next checkpoint counts
    exactly the samples of the 2-rank run never stopped; and checkpoints load in a process of their own (the
    classes live in the script's __main__, the checkpoint holds none)."""
    args = [*SMALL, "--env-id=thirdparty_env:Swing-v0", "--total-timesteps=192", "--checkpoint-interval=1"]
    p = torchrun(SCRIPT, *args, "--run-name=full", cwd=tmp_path, timeout=180, PYTHONPATH=SUPPORT)
    assert p.returncode == 0, explain(p)
    full, cut = tmp_path / "runs/full", tmp_path / "runs/cut"
    shutil.copytree(full, cut)
    (cut / "checkpoints/update_00000003.pt").unlink()
    (cut / "final_model.pt").unlink()
    one_rank = ["--run-name=cut", "--resume", "--num-envs=0"]
    p = torchrun(SCRIPT, *args, *one_rank, nproc=1, cwd=tmp_path, timeout=180, PYTHONPATH=SUPPORT)
    assert p.returncode == 0 and "the environments cannot save their state" in p.stdout, explain(p)
    assert "on 1 x 8 now" in p.stdout, explain(p)
    a, b = (torch.load(d / "checkpoints/update_00000003.pt", weights_only=False) for d in (full, cut))
    assert [r["env"] for r in a["ranks"] + b["ranks"]] == [None] * 3
    prior = 1e-4
    assert a["model"]["obs_rms.count"].tolist() == pytest.approx([prior + 3 * 64] * 3)  # 3 updates x 2 ranks
    assert torch.equal(a["model"]["obs_rms.count"], b["model"]["obs_rms.count"])
    assert torch.equal(a["shared"]["return_rms"]["count"], b["shared"]["return_rms"]["count"])
    ckpt = str(cut / "checkpoints/update_00000002.pt")
    p = python(SCRIPT, "--eval-checkpoint", ckpt, "--eval-episodes=2", timeout=60, PYTHONPATH=SUPPORT)
    assert p.returncode == 0 and "2 greedy episodes: episode return per episode" in p.stdout, explain(p)


def test_evaluation_uses_the_saved_statistics_frozen():
    """Greedy play normalizes by the agent's statistics and never updates them: the same weights with other
    statistics play otherwise, and after an evaluation the statistics are those it began with."""
    args = cont.Args(env_id="Pendulum-v1", hidden_size=16)
    torch.manual_seed(0)
    agent = cont.Agent((3,), 1, args)
    with torch.no_grad():
        agent.actor_mean[-1].weight.mul_(100)  # a policy whose actions follow the observation
    scores = []
    for mean in (0.0, 0.8):
        agent.obs_rms.mean.fill_(mean)
        before = {k: v.clone() for k, v in agent.state_dict().items()}
        scores.append(cont.evaluate(cont.greedy(agent), args, 2)["eval/episode_return"])
        assert all(torch.equal(v, agent.state_dict()[k]) for k, v in before.items())
    assert scores[0] != scores[1], scores


def test_a_final_model_plays_with_its_statistics(tmp_path):
    """--eval-checkpoint rebuilds the agent from final_model.pt, statistics included: changing the saved
    statistics changes the play (an evaluation that re-estimated them, or left them out, would not)."""
    args = cont.Args(env_id="Pendulum-v1", hidden_size=16)
    torch.manual_seed(0)
    agent = cont.Agent((3,), 1, args)
    with torch.no_grad():
        agent.actor_mean[-1].weight.mul_(100)
    meta = {"args": vars(args), "world_size": 1, "obs_shape": (3,), "n_actions": 1}
    outputs = []
    for mean in (0.0, 0.8):
        agent.obs_rms.mean.fill_(mean)
        torch.save({"model": agent.state_dict(), **meta}, tmp_path / f"m{mean}.pt")
        p = python(
            SCRIPT, "--eval-checkpoint", str(tmp_path / f"m{mean}.pt"), "--eval-episodes=2", timeout=60
        )
        assert p.returncode == 0, explain(p)
        outputs.append(p.stdout.split("episode return per episode")[1].split()[0])
    assert outputs[0] != outputs[1], outputs


@pytest.mark.parametrize(
    "env_id, message",
    [
        ("CartPole-v1", "its actions are Discrete(2): ppo_ddp_gym.py trains those"),
        ("thirdparty_env:Unbounded-v0", "unbounded actions"),
        (
            "thirdparty_env:NeedsMissing-v0",
            "needs a package that is missing (pip install the package it names)",
        ),
    ],
)
def test_environments_it_cannot_train_are_refused_with_one_line(tmp_path, env_id, message):
    p = python(SCRIPT, f"--env-id={env_id}", cwd=tmp_path, timeout=60, PYTHONPATH=SUPPORT)
    assert p.returncode == 2 and message in p.stderr and p.stderr.strip().count("\n") == 0, explain(p)
    assert not (tmp_path / "runs").exists()


def test_a_missing_mujoco_names_its_pip_install(monkeypatch):
    """Without MuJoCo installed, gym.make of a MuJoCo id raises DependencyNotInstalled: the one line says
    which pip install brings it (simulated: MuJoCo is installed here)."""

    def missing(*_, **__):
        raise gym_error("MuJoCo is not installed")

    gym_error = cont.gym.error.DependencyNotInstalled
    monkeypatch.setattr(cont.gym, "make", missing)
    with pytest.raises(cont.ArgError, match=r"pip install 'gymnasium\[mujoco\]'"):
        cont.env_spaces(cont.Args(env_id="Hopper-v4"))


def test_bad_arguments_stop_every_rank_before_anything_is_written(tmp_path):
    p = torchrun(SCRIPT, "--env-id=Pendulum-v1", "--total-timesteps=1000", cwd=tmp_path, timeout=120)
    assert p.returncode != 0 and "exitcode: 2" in p.stderr, explain(p)
    says = "is below one update's global batch (1 envs x 1024 steps x 2 ranks)"
    assert p.stderr.count(says) == 2, explain(p)
    assert not (tmp_path / "runs").exists()
