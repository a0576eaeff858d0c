"""A stopped run continues exactly: --resume of a run cut after a checkpoint and an elastic restart end
bit-identical to an uninterrupted run, a SIGTERM during a checkpoint write loses nothing, bad checkpoints are
named and skipped, a checkpoint that cannot be written stops every rank, and a resume with another schedule
(or a run name reused without --resume) is refused."""

import importlib
import os
import signal

import pytest
import torch
from helpers import (
    SMALL,
    explain,
    finish,
    progress,
    python,
    start,
    torchrun,
    torchrun_cmd,
    wait_for,
    weights,
    workers,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@pytest.mark.slow
def test_elastic_restart_resumes_after_a_worker_is_killed(tmp_path):
    """SIGKILL one worker mid-run: torchrun restarts the group, which resumes from its newest checkpoint
    (older ones are there too) in the same run directory (the default run name is stable across restarts),
    completes the run, and ends bit-identical to an uninterrupted run. The Arena with the LSTM: the restart is
    the operations', and what each script's envs and memory need is in its invariants' resume."""
    script, *agent = "ppo_ddp.py", "--agent=lstm"
    total_updates = 15
    args = [*SMALL, *agent, f"--total-timesteps={4096 * total_updates}", "--checkpoint-interval=3"]
    proc = start(
        torchrun_cmd(script, *args, launcher_args=("--standalone", "--max-restarts=1")), cwd=tmp_path
    )
    csv_files = lambda: list((tmp_path / "runs").glob("*/progress.csv"))  # noqa: E731
    seven_rows = lambda: csv_files() and len(progress(csv_files()[0].parent)) >= 7  # noqa: E731
    assert wait_for(seven_rows, 120, proc), finish(proc, 5)
    victims = workers(proc.pid, script)
    logged = len(progress(csv_files()[0].parent))  # checkpoint k is complete before row k + 1 is written
    assert len(victims) == 2, victims
    os.kill(victims[1], signal.SIGKILL)
    p = finish(proc, 240)
    assert p.returncode == 0, explain(p)
    (run_dir,) = [d.parent for d in csv_files()]  # one run directory, before and after the restart
    resumed = int(p.stdout.split("resumed from ", 1)[1].split(" at update ", 1)[1].split(",")[0])
    assert resumed >= 3 * ((logged - 1) // 3) >= 6, (resumed, logged)  # the newest, not checkpoint 3
    r = progress(run_dir)
    assert [int(x["update"]) for x in r] == list(range(1, total_updates + 1))  # no gap, no duplicate
    assert int(r[-1]["global_step"]) == 4096 * total_updates
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    for ckpt in (run_dir / "checkpoints").glob("*.pt"):
        torch.load(ckpt, weights_only=False)  # none torn
    p = torchrun(script, *args, "--run-name=uninterrupted", cwd=tmp_path, timeout=180)
    assert p.returncode == 0, explain(p)
    wa, wb = weights(run_dir / "final_model.pt"), weights(tmp_path / "runs/uninterrupted/final_model.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_resume_with_changed_schedule_is_refused(tmp_path, operations):
    """Also: a run name in use is not reused without --resume (exit 2 on every rank, nothing touched)."""
    p = torchrun(
        operations,
        *SMALL,
        "--total-timesteps=8192",
        "--checkpoint-interval=1",
        "--run-name=s",
        cwd=tmp_path,
        timeout=180,
    )
    assert p.returncode == 0, explain(p)
    files = {f: f.read_bytes() for f in (tmp_path / "runs/s").rglob("*") if f.is_file()}
    p = torchrun(operations, *SMALL, "--total-timesteps=8192", "--run-name=s", cwd=tmp_path, timeout=120)
    assert p.returncode != 0 and "exitcode: 2" in p.stderr
    assert p.stderr.count("error: runs/s already holds a run: continue it with --resume") == 2, explain(p)
    assert files == {f: f.read_bytes() for f in (tmp_path / "runs/s").rglob("*") if f.is_file()}
    p = torchrun(
        operations, *SMALL, "--total-timesteps=16384", "--run-name=s", "--resume", cwd=tmp_path, timeout=120
    )
    assert p.returncode != 0 and "exitcode: 2" in p.stderr
    assert p.stderr.count("was written with total_timesteps=8192; resume with the same value") == 2


SLOW_SAVE = """
import io, os, time
import torch

_save = torch.save


def half_then_wait(obj, f, *args, **kwargs):  # write half of update 2's checkpoint, then stall
    if not isinstance(f, (str, os.PathLike)) or "update_00000002.pt" not in os.fspath(f):
        return _save(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    _save(obj, buf, *args, **kwargs)
    with open(f, "wb") as out:
        out.write(buf.getvalue()[: buf.tell() // 2])
        out.flush()
        time.sleep(float(os.environ["STALL_S"]))
        out.write(buf.getvalue()[buf.tell() // 2 :])


torch.save = half_then_wait
"""


@pytest.mark.slow
def test_sigterm_during_a_checkpoint_write(tmp_path):
    """A scheduler's SIGTERM reaches torchrun while rank 0 is half-way through writing checkpoint 2
    (torch.save stalled 4 s from outside, by a sitecustomize on PYTHONPATH): the write completes, the ranks
    stop after the next update with its checkpoint, all three load, and --resume continues from the newest to
    the end."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SLOW_SAVE)
    args = [*SMALL, "--total-timesteps=16384", "--checkpoint-interval=1", "--run-name=p"]
    env = {"PYTHONPATH": str(inject), "STALL_S": "4"}
    proc = start(torchrun_cmd("ppo_ddp_snake.py", *args), cwd=tmp_path, **env)
    ckpts = tmp_path / "runs/p/checkpoints"
    writing = lambda: any(f.stat().st_size > 0 for f in ckpts.glob("update_00000002*"))  # noqa: E731
    assert wait_for(writing, 120, proc), finish(proc, 5)
    proc.send_signal(signal.SIGTERM)  # to torchrun, which stops its workers with SIGTERM
    p = finish(proc, 90)
    assert p.returncode != 0, explain(p)
    mod = importlib.import_module("ppo_ddp_snake")
    assert sorted(f.name for f in ckpts.iterdir()) == [f"update_0000000{u}.pt" for u in (1, 2, 3)], explain(p)
    assert "stopped by SIGTERM (2 of 2 ranks) at update 3" in p.stdout, explain(p)
    for u in (1, 2, 3):
        assert mod.load_checkpoint(ckpts / f"update_{u:08d}.pt", mod.CHECKPOINT_KEYS)["update"] == u
    p = torchrun("ppo_ddp_snake.py", *args, "--resume", cwd=tmp_path, timeout=180)
    assert p.returncode == 0, explain(p)
    assert "resumed from runs/p/checkpoints/update_00000003.pt at update 3" in p.stdout
    assert [int(r["update"]) for r in progress(tmp_path / "runs/p")] == [1, 2, 3, 4]


@pytest.mark.slow
def test_corrupt_checkpoint_and_failed_write(tmp_path, operations):
    """A truncated checkpoint and one that unpickles but lacks a key: --eval-checkpoint names each (exit 2),
    and resume falls back past both to the last good one. A checkpoint that cannot be written (here its
    temporary name is taken by a directory; a full disk fails the same way) stops every rank with one line,
    and leaves the earlier checkpoints and progress.csv as they were."""
    args = [*SMALL, "--total-timesteps=12288", "--checkpoint-interval=1", "--run-name=k"]
    p = torchrun(operations, *args, cwd=tmp_path, timeout=180)
    assert p.returncode == 0, explain(p)
    ckpts = tmp_path / "runs/k/checkpoints"
    truncated, lacking = ckpts / "update_00000003.pt", ckpts / "update_00000002.pt"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    ckpt = torch.load(lacking, weights_only=False)
    del ckpt["n_actions"]
    torch.save(ckpt, lacking)
    for bad, why in ((truncated, ""), (lacking, ": it lacks n_actions")):
        p = python(operations, "--eval-checkpoint", str(bad), timeout=60)
        assert p.returncode == 2 and p.stderr.startswith(f"error: cannot load checkpoint {bad}{why}"), (
            explain(p)
        )
    (ckpts / "update_00000002.pt.tmp").mkdir()  # the resumed run's next checkpoint cannot be written
    first_row = progress(tmp_path / "runs/k")[0]
    p = torchrun(operations, *args, "--resume", cwd=tmp_path, timeout=180)
    assert p.returncode == 1, explain(p)
    # rank 0 alone reads, once per bad file
    assert p.stderr.count("falling back to the previous checkpoint") == 2
    assert "resumed from runs/k/checkpoints/update_00000001.pt" in p.stdout
    failed = "error: cannot write checkpoint runs/k/checkpoints/update_00000002.pt: "
    assert p.stderr.count(failed) == 2 and p.stderr.count("training stopped on every rank") == 2, explain(p)
    assert torch.load(ckpts / "update_00000001.pt", weights_only=False)["update"] == 1
    rows = progress(tmp_path / "runs/k")  # update 2 was done again and logged before its checkpoint failed
    assert [r["update"] for r in rows] == ["1", "2"] and rows[0] == first_row
    (ckpts / "update_00000002.pt.tmp").rmdir()
    p = torchrun(operations, *args, "--resume", cwd=tmp_path, timeout=180)
    assert p.returncode == 0, explain(p)
    assert [int(r["update"]) for r in progress(tmp_path / "runs/k")] == [1, 2, 3]
    boards = EventAccumulator(str(tmp_path / "runs/k"))  # updates 2 and 3 logged by 3 sessions: once each
    boards.Reload()
    assert [e.step for e in boards.Scalars("charts/SPS")] == [4096, 8192, 12288]
