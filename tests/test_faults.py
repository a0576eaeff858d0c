"""Failures end the job instead of hanging it: an exception on one rank, a NaN loss, Ctrl-C; and
destroy_process_group() really ends the group (no gloo thread left at exit)."""

import os
import signal
import time

import torch
from helpers import SMALL, explain, finish, start, torchrun, torchrun_cmd, wait_for


def test_exception_on_one_rank_ends_the_job(tmp_path, operations):
    """Rank 1 raises at update 2 while rank 0 waits in a collective: the job ends, it does not hang."""
    t0 = time.time()
    p = torchrun(
        operations, *SMALL, "--total-timesteps=40960", cwd=tmp_path, timeout=120, PPO_DDP_FAULT="1:2"
    )
    assert p.returncode == 1, explain(p)
    assert "RuntimeError: injected fault on rank 1 at update 2" in p.stderr and "Traceback" in p.stderr
    assert time.time() - t0 < 60  # well inside --dist-timeout=60 plus start-up


# A sitecustomize on PYTHONPATH that writes, as the interpreter exits, the names of the threads still running.
THREADS_AT_EXIT = """
import atexit, os

def _threads_at_exit():
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
    with open(os.path.join(os.environ["THREADS_DIR"], f"rank{os.environ.get('RANK', '-')}.txt"), "w") as f:
        f.write("\\n".join(sorted(names)))

atexit.register(_threads_at_exit)
"""


def threads_at_exit(tmp_path) -> dict:
    """PYTHONPATH and THREADS_DIR so a launch's processes report their threads at exit; see gloo_threads."""
    inject, out = tmp_path / "inject", tmp_path / "threads"
    inject.mkdir(exist_ok=True)
    out.mkdir(exist_ok=True)
    (inject / "sitecustomize.py").write_text(THREADS_AT_EXIT)
    return {"PYTHONPATH": str(inject), "THREADS_DIR": str(out)}


def gloo_threads(tmp_path) -> dict[str, list[str]]:
    """The gloo threads each rank still ran at interpreter exit (written by THREADS_AT_EXIT)."""
    files = sorted((tmp_path / "threads").glob("rank[0-9]*.txt"))
    assert [f.stem for f in files] == ["rank0", "rank1"]
    return {f.stem: [t for t in f.read_text().split() if "gloo" in t] for f in files}


def test_the_process_group_is_really_destroyed(tmp_path, operations):
    """destroy_process_group() ends gloo's threads, so none is left to die with the interpreter (where, now
    and then, one aborted a finished run with SIGABRT). torch.distributed.nn binds the world group into its
    default arguments when first imported (DDP imports it through torch._dynamo): imported after
    init_process_group it kept the group, and its threads, alive in every run. The scripts import it first."""
    args = [*SMALL, "--total-timesteps=8192"]
    p = torchrun(operations, *args, cwd=tmp_path, timeout=120, **threads_at_exit(tmp_path))
    assert p.returncode == 0, explain(p)
    assert gloo_threads(tmp_path) == {"rank0": [], "rank1": []}


def test_ctrl_c_stops_every_rank_and_keeps_the_checkpoint(tmp_path, operations):
    proc = start(
        torchrun_cmd(
            operations, *SMALL, "--total-timesteps=4096000", "--checkpoint-interval=2", "--run-name=c"
        ),
        cwd=tmp_path,
        **threads_at_exit(tmp_path),
    )
    ckpts = lambda: sorted((tmp_path / "runs/c/checkpoints").glob("update_*.pt"))  # noqa: E731
    assert wait_for(lambda: len(ckpts()) >= 2, 120, proc), finish(proc, 5)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: torchrun and its workers
    p = finish(proc, 90)
    assert p.returncode != 0
    assert p.stderr.count("interrupted; destroying the process group") == 2, explain(p)
    assert not list((tmp_path / "runs/c/checkpoints").glob("*.tmp"))
    assert torch.load(ckpts()[-1], weights_only=False)["update"] % 2 == 0
    assert gloo_threads(tmp_path) == {"rank0": [], "rank1": []}  # and the group is really gone


def test_nan_loss_stops_every_rank(tmp_path, operations):
    p = torchrun(
        operations, *SMALL, "--total-timesteps=40960", "--learning-rate=1e30", cwd=tmp_path, timeout=120
    )
    assert p.returncode != 0, explain(p)
    assert p.stderr.count("error: non-finite weights after update 1") == 2  # one line from each rank
    assert p.stderr.count("training stopped on every rank") == 2
