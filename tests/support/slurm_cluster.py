"""A real SLURM cluster on localhost for the tests: Debian's munged, slurmctld and slurmd, one node of 2 CPUs,
started without systemd in a directory of its own and stopped by their own process ids. If it cannot start,
the tests that use it fail (they are never skipped): CI installs the packages (.ci/run)."""

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "squeue", "sinfo", "scancel", "srun")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def slurm_conf(d: Path, host: str) -> str:
    """One node, `host`, with 2 CPUs; no cgroups, no accounting; a requeued job starts again within ~15 s
    (cred_expire, the scheduler's interval); KillWait is SLURM's default, 30 s."""
    return f"""ClusterName=ppotest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.sock,cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
ReturnToService=2
KillWait=30
MinJobAge=600
NodeName={host} CPUs=2 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each daemon by its pid (the last started first), then SIGKILL what is left after 15 s."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


@contextmanager
def cluster(d: Path):
    """Start munged, slurmctld and slurmd in `d`; yield a client's environment (SLURM_CONF); stop them."""
    missing = [b for b in (*DAEMONS, *CLIENTS) if shutil.which(b) is None]
    assert not missing, (
        f"SLURM is not installed ({', '.join(missing)}): apt-get install {' '.join(DAEMONS[1:])} ..."
    )
    for sub in ("state", "spool"):
        (d / sub).mkdir(parents=True)
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = d / "slurm.conf"
    conf.write_text(slurm_conf(d, socket.gethostname().split(".")[0]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = [
        ["munged", "-F", "-f", f"--socket={d}/munge.sock", f"--key-file={key}", f"--pid-file={d}/munged.pid"]
        + [f"--seed-file={d}/munged.seed", f"--log-file={d}/munged.log"],
        ["slurmctld", "-D", "-i"],
        ["slurmd", "-D"],
    ]
    procs = []
    try:
        for cmd in daemons:
            log = open(d / f"{cmd[0]}.log", "a")  # noqa: SIM115  (the daemon keeps it)
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=d))
            time.sleep(0.5)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            dead = [c[0] for c, p in zip(daemons, procs, strict=True) if p.poll() is not None]
            assert not dead, f"{', '.join(dead)} exited: see {d}/*.log\n" + logs(d)
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=10
            )
            if state.stdout.strip() == "idle":
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the SLURM node never became idle\n{logs(d)}")
        yield env
    finally:
        subprocess.run(["scancel", "--full", "--user=root"], env=env, capture_output=True, timeout=10)
        stop(procs)


def logs(d: Path) -> str:
    return "\n".join(f"--- {f.name}\n{f.read_text()[-3000:]}" for f in sorted(d.glob("*.log")))


def job(env: dict, job_id: str) -> dict[str, str]:
    """The job's fields from `scontrol show job` (JobState, Restarts, ExitCode, ...)."""
    out = subprocess.run(
        ["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True, timeout=10
    )
    return dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)


def processes_under(d: Path) -> list[str]:
    """Command lines of the running processes whose working directory is in `d` (a job's processes)."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and Path(os.readlink(p / "cwd")).is_relative_to(d):
                found.append((p / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found
