"""How a PPO script scales from one CPU rank to two, and how much of the gap is DDP's, side by side.

Three arms, each with one torch thread per process, run in turn (rotated each round so that drift of a
shared machine hits all alike):

  1 rank          one process of the script pinned to CPU 0
  2 independent   two processes at once, pinned to CPUs 0 and 1, seeds 1 and 2, no communication:
                  what two cores give when nothing is synchronized (the hardware's own scaling)
  2 ranks DDP     torchrun --standalone --nproc-per-node=2 script: one agent, gradients all-reduced

Every arm makes the same number of environment steps per process. A run's figure is the median of
charts/SPS in its progress.csv (global steps/s; the first --skip updates left out); "2 independent" adds
its two processes' medians. Ratios are taken within a round and summarized by their median and range:

  DDP / 1 rank           the scaling a user gets (Snake's target: >= 1.85)
  independent / 1 rank   the scaling the machine allows
  DDP / independent      DDP's efficiency: what synchronizing costs

    python bench_scaling.py --rounds 3                        # Snake at its defaults
    python bench_scaling.py --script ppo_ddp.py --rounds 3    # the Arena
"""

import csv
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parent
ARMS = ("1 rank", "2 independent", "2 ranks DDP")


@dataclass
class Args:
    script: str = "ppo_ddp_snake.py"
    """the training script: ppo_ddp_snake.py or ppo_ddp.py"""
    rounds: int = 3
    """rounds; each runs every arm once"""
    steps_per_process: int = 2_457_600
    """environment steps of each process in every arm (Snake's defaults: 75 updates)"""
    num_envs: int = 256
    """envs per process in every arm: what --num-envs 0 gives a one-thread rank in a default run (the total
    here is too small for --num-envs 0 to pick as many)"""
    skip: int = 5
    """first updates of each run left out of its median (start-up)"""
    extra: str = ""
    """more flags for the training script, one string: --extra="--num-steps 64" """
    out_dir: str = "runs/bench_scaling"
    """the runs go to OUT_DIR/runs/<arm>; each arm replaces only its own run directories"""
    json_out: str = ""
    """also write every figure to this JSON file"""
    timeout: float = 900.0
    """seconds one arm may take before the benchmark fails"""


class ArgError(ValueError):
    """A bad flag: one line on stderr, exit code 2."""


def check_args(args: Args) -> None:
    if not (ROOT / args.script).is_file():
        raise ArgError(f"--script {args.script}: no such file next to bench_scaling.py")
    if min(args.rounds, args.steps_per_process, args.num_envs) < 1 or args.skip < 0:
        raise ArgError("--rounds, --steps-per-process and --num-envs must be positive, --skip >= 0")
    if len(os.sched_getaffinity(0)) < 2:
        raise ArgError("this benchmark needs at least 2 CPUs to pin two processes")


def launch(args: Args, arm: str, out: Path) -> list[Path]:
    """Start one arm, wait for it, return the run directories whose progress.csv hold its figures."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    flags = [
        "--no-cuda",
        "--num-envs",
        str(args.num_envs),
        "--eval-interval",
        "0",
        "--checkpoint-interval",
        "0",
    ]
    flags += ["--print-interval", "1e9"]
    script, steps, name = str(ROOT / args.script), args.steps_per_process, arm.replace(" ", "_")
    jobs = []  # (command, CPU to pin it to or None, run name)
    if arm == "1 rank":
        jobs.append(([script, "--total-timesteps", str(steps)], cpus[0], name))
    elif arm == "2 independent":
        for i in (0, 1):
            jobs.append(
                ([script, "--total-timesteps", str(steps), "--seed", str(1 + i)], cpus[i], f"{name}_{i}")
            )
    else:
        torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        jobs.append(([*torchrun, script, "--total-timesteps", str(2 * steps)], None, name))
    procs = []
    for cmd, cpu, run_name in jobs:
        shutil.rmtree(out / "runs" / run_name, ignore_errors=True)  # the previous round's run of this arm
        pin = (lambda c=cpu: os.sched_setaffinity(0, {c})) if cpu is not None else None
        procs.append(
            subprocess.Popen(
                [sys.executable, *cmd, *flags, "--run-name", run_name, *shlex.split(args.extra)],
                cwd=out,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=pin,
                start_new_session=True,  # a process group: torchrun's workers go with it
            )
        )
    deadline = time.time() + args.timeout
    try:
        for p in procs:
            try:
                _, err = p.communicate(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"arm {arm!r} ran past --timeout {args.timeout:g} s") from None
            if p.returncode:
                raise RuntimeError(f"arm {arm!r} failed with exit {p.returncode}:\n{err[-3000:]}")
    finally:
        for p in procs:  # on failure, the arm's other processes too
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [out / "runs" / run_name for _, _, run_name in jobs]


def median_sps(run_dir: Path, skip: int) -> float:
    with open(run_dir / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))[skip:]
    if not rows:
        raise RuntimeError(f"{run_dir}: no updates left after --skip {skip}; raise --steps-per-process")
    return statistics.median(float(r["charts/SPS"]) for r in rows)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> int:
    args = tyro.cli(Args)
    try:
        check_args(args)
    except ArgError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sps = {arm: [] for arm in ARMS}
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for r in range(args.rounds):
        order = ARMS[r % 3 :] + ARMS[: r % 3]
        for arm in order:
            sps[arm].append(sum(median_sps(d, args.skip) for d in launch(args, arm, out)))
            print(f"round {r + 1}/{args.rounds}  {arm:<14} {sps[arm][-1]:>10,.0f} steps/s", flush=True)
    ratios = {
        "DDP / 1 rank": [d / o for d, o in zip(sps["2 ranks DDP"], sps["1 rank"], strict=True)],
        "independent / 1 rank": [i / o for i, o in zip(sps["2 independent"], sps["1 rank"], strict=True)],
        "DDP / independent": [d / i for d, i in zip(sps["2 ranks DDP"], sps["2 independent"], strict=True)],
    }
    print(f"\n{args.script} {args.extra}: median over {args.rounds} rounds (global steps/s)")
    for arm in ARMS:
        print(f"  {arm:<22} {statistics.median(sps[arm]):>10,.0f}")
    for k, v in ratios.items():
        print(f"  {k:<22} {statistics.median(v):>10.3f}  (rounds: {', '.join(f'{x:.3f}' for x in v)})")
    if args.json_out:
        machine = {"cpu": cpu_name(), "cpus": len(os.sched_getaffinity(0)), "date": started}
        result = {"args": asdict(args), "machine": machine, "sps": sps, "ratios": ratios}
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
