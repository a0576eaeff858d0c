"""Preemption loses nothing: a stop signal (SIGTERM, SIGUSR1) stops every rank at the end of the update in
flight with a checkpoint of it; --resume, a torchrun restart or a requeued SLURM job continues from there and
ends bit-identical to an uninterrupted run. The SLURM tests run a real cluster on localhost
(tests/support/slurm_cluster.py)."""

import importlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slurm_cluster
import torch
import torch.distributed as dist
from helpers import (
    ROOT,
    SMALL,
    explain,
    finish,
    progress,
    start,
    torchrun,
    torchrun_cmd,
    wait_for,
    wandb_records,
    weights,
)

UPDATES = 8
ARGS = [*SMALL, f"--total-timesteps={4096 * UPDATES}", "--checkpoint-interval=0"]  # only a stop checkpoints
SNAKE = "ppo_ddp_snake.py"
SUPPORT = str(ROOT / "tests" / "support")  # thirdparty_env.py


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final weights of the run the preempted ones must end bit-identical to."""
    d = tmp_path_factory.mktemp("uninterrupted")
    p = torchrun(SNAKE, *ARGS, "--run-name=u", cwd=d, timeout=180)
    assert p.returncode == 0, explain(p)
    return weights(d / "runs/u/final_model.pt")


def updates(run_dir: Path) -> list[int]:
    return [int(r["update"]) for r in progress(run_dir)] if (run_dir / "progress.csv").exists() else []


def stopped_at(out: str, how: str) -> int:
    found = re.findall(rf"stopped by {how} at update (\d+): checkpoint", out)
    assert len(found) == 1, out[-3000:]
    return int(found[0])


def wandb_run(path: Path) -> tuple[str, list[int]]:
    """An offline wandb session: its run id and the global_step of each history row."""
    records = list(wandb_records(path))
    (run_id,) = {r.run.run_id for r in records if r.WhichOneof("record_type") == "run"}
    rows = [r for r in records if r.WhichOneof("record_type") == "history"]
    steps = [
        json.loads(i.value_json)
        for r in rows
        for i in r.history.item
        if list(i.nested_key) == ["global_step"]
    ]
    return run_id, steps


def assert_ends_identical(run_dir: Path, uninterrupted: dict) -> None:
    assert updates(run_dir) == list(range(1, UPDATES + 1))  # every update logged once
    final = weights(run_dir / "final_model.pt")
    assert all(torch.equal(final[k], uninterrupted[k]) for k in uninterrupted)


@pytest.mark.slow
def test_sigterm_to_torchrun_checkpoints_the_update_in_flight_and_resume_is_exact(tmp_path, uninterrupted):
    """No periodic checkpoint is due: the SIGTERM's own checkpoint holds the update in flight (the newest
    row), every rank leaves before torchrun's 30 s would SIGKILL it, and --resume ends bit-identical; with
    --track the resumed session continues the same wandb run (offline here), every update logged once."""
    run_dir, track = tmp_path / "runs/p", {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    proc = start(torchrun_cmd(SNAKE, *ARGS, "--run-name=p", "--track"), cwd=tmp_path, **track)
    assert wait_for(lambda: len(updates(run_dir)) >= 3, 120, proc), finish(proc, 5)
    proc.send_signal(signal.SIGTERM)  # to torchrun, which sends it on to its workers
    p = finish(proc, 60)
    k = stopped_at(p.stdout, r"SIGTERM \(2 of 2 ranks\)")
    assert "forcefully exiting" not in p.stderr, explain(p)  # torchrun did not have to SIGKILL a worker
    assert updates(run_dir) == list(range(1, k + 1)) and 3 <= k < UPDATES
    assert sorted(f.name for f in (run_dir / "checkpoints").iterdir()) == [f"update_{k:08d}.pt"]
    p = torchrun(SNAKE, *ARGS, "--run-name=p", "--resume", "--track", cwd=tmp_path, timeout=180, **track)
    assert p.returncode == 0, explain(p)
    assert f"resumed from runs/p/checkpoints/update_{k:08d}.pt at update {k}," in p.stdout
    assert_ends_identical(run_dir, uninterrupted)
    sessions = [wandb_run(f) for f in sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))]
    assert len(sessions) == 2 and sessions[0][0] == sessions[1][0], sessions  # one wandb run id
    steps = [h for _, history in sessions for h in history]
    assert steps == [4096 * u for u in range(1, UPDATES + 1)], steps


def test_a_signal_during_evaluation_cuts_it_short(tmp_path):
    """Rank 0 evaluates in episodes that never end (tests/support/thirdparty_env.py's Endless-v0), for up to
    --dist-timeout / 2 = 60 s, while rank 1 waits for it: a SIGTERM then ends the evaluation, and the ranks
    stop after the next update with its checkpoint, well inside torchrun's 30 s."""
    args = ["--env-id=thirdparty_env:Endless-v0", "--num-envs=2", "--num-steps=16", "--total-timesteps=6400"]
    args += ["--eval-interval=2", "--eval-episodes=2", "--dist-timeout=120", "--print-interval=0"]
    run_dir = tmp_path / "runs/e"
    proc = start(torchrun_cmd("ppo_ddp_gym.py", *args, "--run-name=e"), cwd=tmp_path, PYTHONPATH=SUPPORT)
    assert wait_for(lambda: len(updates(run_dir)) >= 1, 120, proc), finish(proc, 5)
    time.sleep(2)  # update 2 takes a fraction of a second: its evaluation is running
    proc.send_signal(signal.SIGTERM)
    p = finish(proc, 60)
    assert stopped_at(p.stdout, r"SIGTERM \(2 of 2 ranks\)") == 3, explain(p)
    assert "the evaluation stopped by a signal: 0 of 2 episodes ended" in p.stderr
    assert (run_dir / "checkpoints/update_00000003.pt").is_file() and "forcefully exiting" not in p.stderr


def test_the_default_run_name_is_the_slurm_job_id(monkeypatch):
    """Under SLURM the default run name ends with the job id, which a requeued job keeps (a standalone
    torchrun inside the job gets a new run id each time): a requeued job finds its run directory."""
    snake = importlib.import_module("ppo_ddp_snake")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "1f0e0c3a-9a3b-4d9e")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert snake.agree_run_name(snake.Args()) == "ppo_ddp_snake__1__4242"
        monkeypatch.delenv("SLURM_JOB_ID")
        assert snake.agree_run_name(snake.Args()) == "ppo_ddp_snake__1__1f0e0c3a"
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------
# On a real SLURM: the recipe slurm/ppo_ddp.sbatch, requeued by hand and at its time-limit warning
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    with slurm_cluster.cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


def sbatch(env: dict, cwd: Path, *script_args: str) -> str:
    """Queue slurm/ppo_ddp.sbatch on the test node (2 CPUs, no GPU) with a node range (the one node is what
    the job gets), torchrun from this Python; the job id."""
    bin_dir = str(Path(sys.executable).parent)
    job_env = {**env, "PATH": f"{bin_dir}:{env['PATH']}", "NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1"}
    cmd = ["sbatch", "--parsable", "--nodes=1-2", "--gpus-per-node=0", "--cpus-per-task=2", "--time=10"]
    p = subprocess.run(
        [*cmd, str(ROOT / "slurm/ppo_ddp.sbatch"), str(ROOT / SNAKE), *script_args],
        env=job_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def wait_for_job(env: dict, job_id: str, condition, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = slurm_cluster.job(env, job_id)
        if condition(fields):
            return fields
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} never got there: {slurm_cluster.job(env, job_id)}")


def assert_requeued_run(tmp_path: Path, job_id: str, fields: dict, uninterrupted: dict, how: str) -> None:
    """Two runs of the job: the first stopped by `how` with a checkpoint, the second (SLURM_RESTART_COUNT=1)
    resumed from it by itself, in the run directory named after the job, and ended bit-identical."""
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1" and fields["ExitCode"] == "0:0", (
        log
    )
    assert f"job {job_id} run 0:" in log and f"job {job_id} run 1:" in log, log
    k = stopped_at(log, how)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name == f"ppo_ddp_snake__1__{job_id}", run_dir
    assert f"resumed from runs/{run_dir.name}/checkpoints/update_{k:08d}.pt at update {k}," in log, log
    assert_ends_identical(run_dir, uninterrupted)
    leftover = lambda: slurm_cluster.processes_under(tmp_path)  # noqa: E731
    assert wait_for(lambda: not leftover(), 15), leftover()


@pytest.mark.slow
def test_a_requeued_slurm_job_resumes_from_its_signal_checkpoint(tmp_path, slurm, uninterrupted):
    """`scontrol requeue` mid-run (what a preemption does): SLURM SIGTERMs the job's processes, the ranks stop
    at the update in flight with its checkpoint, and the requeued job resumes from that very checkpoint."""
    job_id = sbatch(slurm, tmp_path, *ARGS)
    run_dirs = lambda: list((tmp_path / "runs").glob("*"))  # noqa: E731
    three_updates = lambda: run_dirs() and len(updates(run_dirs()[0])) >= 3  # noqa: E731
    assert wait_for(three_updates, 120), slurm_cluster.job(slurm, job_id)
    subprocess.run(["scontrol", "requeue", job_id], env=slurm, check=True, timeout=10)
    fields = wait_for_job(slurm, job_id, lambda f: f["JobState"] in ("COMPLETED", "FAILED", "CANCELLED"), 240)
    assert_requeued_run(tmp_path, job_id, fields, uninterrupted, r"SIGTERM \(2 of 2 ranks\)")


@pytest.mark.slow
def test_at_its_time_limit_warning_a_slurm_job_requeues_itself_and_finishes(tmp_path, slurm, uninterrupted):
    """The recipe's --signal=B:USR1@120 warning reaches the batch shell alone (sent here as SLURM sends it,
    with `scancel --batch --signal=USR1`, rather than waiting out a time limit): the shell requeues the job,
    the ranks stop with a checkpoint, and the job finishes in its second run."""
    job_id = sbatch(slurm, tmp_path, *ARGS)
    run_dirs = lambda: list((tmp_path / "runs").glob("*"))  # noqa: E731
    three_updates = lambda: run_dirs() and len(updates(run_dirs()[0])) >= 3  # noqa: E731
    assert wait_for(three_updates, 120), slurm_cluster.job(slurm, job_id)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], env=slurm, check=True, timeout=10)
    fields = wait_for_job(slurm, job_id, lambda f: f["JobState"] in ("COMPLETED", "FAILED", "CANCELLED"), 240)
    assert f"time limit near: requeue job {job_id}" in (tmp_path / f"slurm-{job_id}.out").read_text()
    assert_requeued_run(tmp_path, job_id, fields, uninterrupted, r"SIGTERM \(2 of 2 ranks\)")
