"""tune.py: studies of real torchrun trials of the Arena (2 gloo ranks) in a real SQLite database."""

import math
import os
import signal
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers import ROOT, explain, finish, progress, run, start, torchrun
from optuna.trial import TrialState

import tune

# A trial of a few updates: 4 rooms per rank, 16 steps, 2 ranks = 128 steps an update;
# an episode every update.
TINY = [
    "--fixed",
    "num-envs=4",
    "num-steps=16",
    "episode-length=16",
    "eval-interval=0",
    "checkpoint-interval=0",
]
SPACE = ["--space", "learning-rate", "ent-coef", "num-minibatches=cat:2,4"]


def tuner(tmp_path: Path, *flags: str) -> list[str]:
    return [sys.executable, str(ROOT / "tune.py"), "--script", str(ROOT / "ppo_ddp.py"),
            "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--study-name", "s",
            *SPACE, *flags]  # fmt: skip


def trials(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}").get_trials()


def trial_pids(run_name: str) -> list[int]:
    """Processes whose command line names this trial's run (its torchrun and both ranks)."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and run_name.encode() in (p / "cmdline").read_bytes():
                found.append(int(p.name))
        except OSError:
            pass
    return found


def wait_for_rows(run_dir: Path, rows: int, proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not ((run_dir / "progress.csv").exists() and len(progress(run_dir)) >= rows):
        assert proc.poll() is None and time.time() < deadline, (
            f"{run_dir}: no {rows} rows (tuner exit {proc.poll()})"
        )
        time.sleep(0.2)


def test_objective_is_the_mean_over_the_last_tenth_of_updates_reported_at_the_same_steps_in_every_trial():
    rows = [(u, 100 * u, float(u) if u % 2 else None) for u in range(1, 26)]  # logged on odd updates only
    # updates 23..25 (the last ceil(2.5)), of which 23 and 25
    assert tune.objective(rows, num_updates=25) == 24.0
    assert math.isnan(tune.objective([(u, u, None) for u in range(1, 11)], 10))
    assert math.isnan(tune.objective([], 10))
    # trials of different batch sizes report at the same fractions of their steps, so the pruner compares them
    small = [(u, 100 * u, 1.0) for u in range(1, 101)]
    large = [(u, 1000 * u, 2.0) for u in range(1, 11)]
    assert (
        list(tune.intermediate(small, 10_000, 100))
        == list(tune.intermediate(large, 10_000, 10))
        == [*range(1, 21)]
    )
    assert tune.intermediate(small[:50], 10_000, 100) == {k: 1.0 for k in range(1, 11)}  # half way: up to 50%
    assert tune.to_flags({"learning-rate": 3e-4, "reward-shaping": False, "gamma": 0.99}) == [
        "--learning-rate", "0.0003", "--no-reward-shaping", "--gamma", "0.99",
    ]  # fmt: skip


@pytest.mark.slow
def test_a_study_of_three_trials_with_one_failing_then_its_best_command_runs(tmp_path):
    # a trial queued by hand whose learning rate makes the gradients overflow: it fails, and the study goes on
    study = optuna.create_study(
        study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize"
    )
    study.enqueue_trial({"learning-rate": 1e6})
    p = run(tuner(tmp_path, "--trials", "3", "--total-timesteps", "2560", *TINY), timeout=420, cwd=tmp_path)
    assert p.returncode == 0, explain(p)
    done = trials(tmp_path)
    assert [t.state for t in done] == [TrialState.FAIL, *[TrialState.COMPLETE] * 3], explain(p)
    failed = done[0]
    assert failed.user_attrs["error"].startswith("exit code 1: error: non-finite weights after update 1")
    assert "training stopped on every rank" in Path(failed.user_attrs["log"]).read_text()
    # the objective is the mean of arena/hearts over the last 10% of the trial's 20 updates
    for t in done[1:]:
        rows = progress(tmp_path / "runs" / t.user_attrs["run_name"])
        assert len(rows) == 20 and all(r["arena/hearts"] for r in rows)
        assert t.value == pytest.approx(sum(float(r["arena/hearts"]) for r in rows[-2:]) / 2)
        assert list(t.intermediate_values) == [*range(1, 21)]
    out = tmp_path / "runs" / "tune-s"
    assert (out / "objective.png").stat().st_size > 0
    assert len((out / "trials.csv").read_text().splitlines()) == 5
    best = max(done[1:], key=lambda t: t.value)
    assert f"best: trial {best.number}" in p.stdout and "parameter importances" in p.stdout

    # the best command line, as printed, trains
    line = p.stdout.split("its command:\n", 1)[1].splitlines()[0]
    assert line == (out / "best_command.txt").read_text().strip()
    assert line.startswith("torchrun --standalone --nproc-per-node=2 ") and "--num-minibatches" in line
    # after `torchrun --standalone --nproc-per-node=2`, torchrun()'s own launch
    script, *argv = line.split()[3:]
    q = torchrun(script, *argv, "--run-name", "best", timeout=180, cwd=tmp_path)
    assert q.returncode == 0 and (tmp_path / "runs/best/final_model.pt").exists(), explain(q)


@pytest.mark.slow
def test_a_study_stopped_by_ctrl_c_then_killed_finishes_with_exactly_the_trials_asked(tmp_path):
    cmd = tuner(
        tmp_path, "--trials", "2", "--total-timesteps", "12800", "--heartbeat", "1", "--pruner", "none", *TINY
    )
    # Ctrl-C during trial 0: the job stops with a checkpoint, the trial is queued again, the tuner exits 130
    tuner_proc = start(cmd, cwd=tmp_path)
    wait_for_rows(tmp_path / "runs/tune-s-0000", 3, tuner_proc)
    tuner_proc.send_signal(signal.SIGINT)
    p = finish(tuner_proc, 120)
    assert p.returncode == 130 and not trial_pids("tune-s-0000"), explain(p)
    # the same command again: the queued trial continues trial 0's run; killed (SIGKILL) during the next trial
    tuner_proc = start(cmd, cwd=tmp_path)
    wait_for_rows(tmp_path / "runs/tune-s-0002", 3, tuner_proc, timeout=240)
    os.kill(tuner_proc.pid, signal.SIGKILL)
    finish(tuner_proc, 30)
    deadline = time.time() + 90
    while trial_pids("tune-s-0002"):  # its job got SIGTERM when the tuner died: it checkpoints and leaves
        assert time.time() < deadline, "the killed tuner's trial is still running"
        time.sleep(0.5)
    assert list((tmp_path / "runs/tune-s-0002/checkpoints").glob("update_*.pt"))
    # and again: the stale trial is failed after its heartbeat's grace, queued,
    # and continued from its checkpoint
    p = run(cmd, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, explain(p)
    done = trials(tmp_path)
    states = [t.state for t in done]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE], explain(p)
    for retried, original in ((done[1], 0), (done[3], 2)):
        assert retried.user_attrs["retry_of"] == original
        assert retried.user_attrs["run_name"] == f"tune-s-{original:04d}"
        assert retried.params == done[original].params
        assert "resumed from" in Path(retried.user_attrs["log"]).read_text()
        assert len(progress(tmp_path / "runs" / retried.user_attrs["run_name"])) == 100  # every update, once


@pytest.mark.slow
def test_a_pruned_trial_stops_its_job_cleanly_and_leaves_no_process(tmp_path):
    flags = ["--trials", "1", "--total-timesteps", "256000", "--pruner", "threshold", "--prune-below", "1e9"]
    p = run(tuner(tmp_path, *flags, "--prune-warmup", "0", *TINY), timeout=300, cwd=tmp_path)
    assert p.returncode == 0, explain(p)
    (t,) = trials(tmp_path)
    assert t.state == TrialState.PRUNED, explain(p)
    log = Path(t.user_attrs["log"]).read_text()
    assert "stopped by SIGTERM (2 of 2 ranks)" in log, log[-3000:]  # every rank left through the stop path
    assert len(progress(tmp_path / "runs/tune-s-0000")) < 2000 and not trial_pids("tune-s-0000")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--trials", "0"], "must be positive"),
        (["--script", "nope.py"], "--script nope.py: no such file"),
        (["--metric", "arena/nope"], "not a column"),
        (["--space", "no-such-flag=cat:1,2"], "has no flag --no-such-flag"),
        (["--space", "hidden-size"], "--space hidden-size: not in the space of"),
        (["--space", "learning-rate=log:1e-4"], "--space learning-rate=log:1e-4"),
        (["--fixed", "seed=3"], "set by the tuner"),
        (["--storage", "nosuch://db"], "--storage nosuch://db"),
    ],
)
def test_bad_tuner_flags_exit_2_with_one_line_before_any_trial(tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", tuner(tmp_path, *flags)[1:])
    monkeypatch.setattr(tune, "run_trial", lambda *a: pytest.fail("a trial started"))
    code, err = tune.main(), capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "study.db").exists()


def test_a_study_reruns_only_with_the_settings_it_was_made_with(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fields = {"learning_rate": 1e-3, "num_envs": 0}
    args = tune.Args(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s", total_timesteps=1000)
    space = tune.build_space(tune.Args(space=["learning-rate"]), fields)
    study = tune.open_study(args, space, fields, "arena/hearts")
    assert [t.params for t in study.get_trials()] == [{}]  # queued: the defaults' trial (state WAITING)
    assert study.get_trials()[0].state == TrialState.WAITING
    study.tell(study.ask(space), 1.0)
    tune.open_study(args, space, fields, "arena/hearts")  # the same settings: loaded as it is
    args.total_timesteps = 2000
    with pytest.raises(tune.TunerError, match="made with total_timesteps 1000, not 2000"):
        tune.open_study(args, space, fields, "arena/hearts")
    args.total_timesteps, args.fixed = 1000, ["num-envs=8"]
    with pytest.raises(tune.TunerError, match="made with fixed"):
        tune.open_study(args, space, fields, "arena/hearts")
