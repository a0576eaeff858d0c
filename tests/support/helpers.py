"""One place that starts subprocesses for every test: always with a timeout and one thread per rank; one place
that builds a torchrun command line (torchrun_cmd); and the small things several test files share."""

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

# The distributed tests' run: 64 boards x 32 steps x 2 ranks = 4096 steps per update.
SMALL = [
    "--num-envs=64",
    "--num-steps=32",
    "--num-minibatches=2",
    "--hidden-size=32",
    "--print-interval=0",
    "--eval-interval=0",
    "--dist-timeout=60",
]

# torchrun's own variables: a child launched from inside a torchrun worker must not inherit them.
_LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


def child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS and not k.startswith("TORCHELASTIC")
    }
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    env.update(extra)
    if "PPO_DDP_FAULT" in extra:  # injected from outside the scripts: tests/faults/sitecustomize.py
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "tests" / "support" / "faults"), *filter(None, [extra.get("PYTHONPATH")])]
        )
    return env


def run(cmd: list[str], timeout: float = 120, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    """Run `cmd` capturing text output; after `timeout` s kill its whole process group and fail the test."""
    return finish(start(cmd, cwd=cwd, **env), timeout)


def python(script: str, *args: str, timeout: float = 120, cwd: Path = ROOT, **env: str):
    return run([sys.executable, str(ROOT / script), *args], timeout=timeout, cwd=cwd, **env)


def torchrun(
    script: str,
    *args: str,
    nproc: int = 2,
    timeout: float = 180,
    cwd: Path = ROOT,
    launcher_args: tuple[str, ...] = ("--standalone",),
    **env: str,
):
    """Run torchrun_cmd(script, *args, ...) to its end; see run()."""
    return run(
        torchrun_cmd(script, *args, nproc=nproc, launcher_args=launcher_args), timeout=timeout, cwd=cwd, **env
    )


def torchrun_cmd(script: str, *args: str, nproc: int = 2, launcher_args: tuple[str, ...] = ("--standalone",)):
    """`torchrun --standalone --nproc-per-node=nproc script args` on CPU (gloo), as this Python's
    torch.distributed.run; `launcher_args` replace --standalone (nodes, rendezvous, restarts). The only place
    a test builds a torchrun command line."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *launcher_args,
        f"--nproc-per-node={nproc}",
        str(ROOT / script),
        *args,
    ]


def progress(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's progress.csv."""
    with open(run_dir / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))


def explain(p: subprocess.CompletedProcess) -> str:
    """Failure message for asserts: the exit code and the tail of both streams."""
    return f"exit {p.returncode}\n--- stdout\n{p.stdout[-6000:]}\n--- stderr\n{p.stderr[-6000:]}"


def start(cmd: list[str], cwd: Path = ROOT, **env: str) -> subprocess.Popen:
    """Start `cmd` in its own process group, for tests that signal it while it runs; end it with finish()."""
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=child_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    """Wait for a start()ed process; after `timeout` s kill its whole process group (torchrun and every worker
    it started) and fail the test with what it printed."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        cmd = " ".join(proc.args)
        raise AssertionError(
            f"timed out after {timeout}s: {cmd}\n--- stdout\n{out}\n--- stderr\n{err}"
        ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def workers(pid: int, script: str) -> list[int]:
    """PIDs of the running processes below `pid` whose command line names `script` (torchrun's workers)."""
    found, parents = [], {pid}
    for _ in range(3):  # a few generations down
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (p / "cmdline").read_bytes().decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
            if ppid in parents:
                parents.add(int(p.name))
                if script in cmdline and int(p.name) not in found:
                    found.append(int(p.name))
    return sorted(found)


def wandb_records(path: Path) -> list:
    """The records of an offline wandb run file (run-*.wandb): the header `:W&B` and its 3 bytes, then
    LevelDB's log format (32 KiB blocks of chunks: crc32 u32, length u16, type u8; 1 = whole, 2/3/4 =
    first/middle/last), each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, chunk, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:  # zeros: the rest of the block is padding
            pos += block - pos % block
            continue
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(chunk))
            chunk = b""
    return records


def gif_frames(path: Path) -> int:
    """How many frames the GIF at `path` holds (it must open as a GIF)."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "GIF", f"{path} is a {image.format}"
        return image.n_frames


def weights(path: Path) -> dict:
    """The model's state dict in a checkpoint or final_model.pt."""
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two_nodes(script: str, *args: str, dirs, threads=(1, 1)):
    """Two torchrun launches on localhost as two "machines": --nnodes=2, one process each, a working directory
    each (no shared run directory) and OMP_NUM_THREADS per node; node 0 holds rank 0."""
    port, procs = free_port(), []
    for node, (d, t) in enumerate(zip(dirs, threads, strict=True)):
        launcher = ("--nnodes=2", f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}")
        cmd = torchrun_cmd(script, *args, nproc=1, launcher_args=launcher)
        procs.append(start(cmd, cwd=d, OMP_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t)))
    return procs


def wait_for(condition, timeout: float, proc=None) -> bool:
    """Poll `condition` every 0.1 s: True once it holds, False after `timeout` s or once `proc` has exited."""
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline or (proc is not None and proc.poll() is not None):
            return False
        time.sleep(0.1)
    return True
