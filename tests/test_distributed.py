"""The distributed path of both PPO scripts, proven: DDP equals one process, determinism, elastic restart,
failures that end the job instead of hanging it, several nodes, and bad checkpoints."""

import gc
import importlib
import json
import os
import shutil
import signal
import socket
import time

import pytest
import torch
import torch.distributed as dist
from equivalence import LR, SEED_PERM, make_problem, reference_update
from helpers import explain, finish, progress, python, run, start, torchrun, torchrun_cmd, workers
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.nn.parallel import DistributedDataParallel as DDP

# 64 boards x 32 steps x 2 ranks = 4096 steps per update.
SMALL = [
    "--num-envs=64",
    "--num-steps=32",
    "--num-minibatches=2",
    "--hidden-size=32",
    "--print-interval=0",
    "--eval-interval=0",
    "--dist-timeout=60",
]


@pytest.fixture(params=["ppo_ddp_snake.py", "ppo_ddp.py", "ppo_ddp_gym.py"])
def script(request):
    """Every script (the Gymnasium one on CartPole, its default): what depends on the environment and the agent
    as well (equivalence, exact resume)."""
    return request.param


@pytest.fixture(
    params=[["ppo_ddp_snake.py"], ["ppo_ddp.py", "--agent=lstm"], ["ppo_ddp_gym.py"]],
    ids=["ppo_ddp_snake", "ppo_ddp-lstm", "ppo_ddp_gym"],
)
def recurrent_too(request):
    """Every script, the Arena's with the LSTM agent, for what must survive a stop (resume, elastic restart): the
    agent's memory too (an MLP has none to lose; Snake's runs cover it), and CartPole's physics, RNG and time-limit
    counters, saved through Gymnasium."""
    return request.param


@pytest.fixture
def machinery():
    """One script for what the machinery alone does (failures, nodes, checkpoints on disk): it is byte-identical
    in both (tests/test_template.py), and CI's time is better spent once."""
    return "ppo_ddp.py"


def weights(path):
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


def wait_for(condition, timeout: float, proc=None):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline or (proc is not None and proc.poll() is not None):
            return False
        time.sleep(0.1)
    return True


def test_ddp_update_equals_a_plain_single_process_update(tmp_path, script):
    """One ppo_update on 2 ranks, each with its half of the batch, equals a plain PPO update of the tests' own
    (tests/equivalence.py) on the whole batch in one process: global minibatches, advantages normalized over
    them, gradients averaged (SGD without clipping: a sum would double every step), and the target-KL stop
    decided on the mean KL of both ranks. The target lies between the mean and the larger half's KL after the
    first epoch: a rank deciding on its own KL would stop there while the other goes on."""
    name = script.removesuffix(".py")
    first = reference_update(name, None)["half_kls"][0]
    target = (sum(first) / 2 + max(first)) / 2
    assert max(first) > 1.2 * min(first)  # the halves disagree enough for the target to tell them apart
    ref = reference_update(name, target)
    assert 4 < ref["steps"] < 16  # past the first epoch, stopped by the KL before the fourth ended
    out = tmp_path / "two.pt"
    p = run(torchrun_cmd("tests/ddp_equivalence_worker.py", name, str(out), repr(target)), 120)
    assert p.returncode == 0, explain(p)
    two = torch.load(out, weights_only=False)
    assert two["steps"] == ref["steps"]
    for k in ref["model"]:
        torch.testing.assert_close(two["model"][k], ref["model"][k], rtol=1e-4, atol=1e-6)
    assert two["stats"] == pytest.approx(ref["stats"], rel=1e-4, abs=1e-7)


def test_same_seed_and_world_size_give_bit_identical_weights(tmp_path, machinery):
    """Also: on CPU each rank keeps to its own CPU (config.json says which), and placement does not change
    the result (run b lets the OS place the ranks); a run of 3 updates warns that it is too short to learn. One
    script: Snake's determinism shows in its resume and elastic tests, which end bit-identical to a fresh run."""
    args = [*SMALL, "--total-timesteps=12288", "--checkpoint-interval=0"]
    for name, flags in (("a", []), ("b", ["--no-pin-cpus"])):
        p = torchrun(machinery, *args, f"--run-name={name}", *flags, cwd=tmp_path, timeout=180)
        assert p.returncode == 0, explain(p)
        assert p.stderr.count("warning: only 3 updates") == 1, explain(p)
    wa, wb = weights(tmp_path / "runs/a/final_model.pt"), weights(tmp_path / "runs/b/final_model.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) >= 2:
        placed = [
            [r["cpus"] for r in json.loads((tmp_path / f"runs/{n}/config.json").read_text())["ranks"]] for n in "ab"
        ]
        half = len(allowed) // 2
        assert placed[0] == [allowed[:half], allowed[half : 2 * half]]  # disjoint shares
        assert placed[1] == [allowed, allowed]


def test_bf16_autocast_trains_on_two_ranks_with_identical_weights(tmp_path, machinery):
    """--precision bf16 (forwards under autocast, losses and weights in fp32) trains and stays in sync, and the
    flag takes effect: the same run in fp32 ends with other weights, though not far from them. With the LSTM
    agent, whose memory is kept in fp32 between the autocast forwards."""
    args = [*SMALL, "--agent=lstm", "--total-timesteps=8192", "--checkpoint-interval=0"]
    for precision in ("bf16", "fp32"):
        p = torchrun(machinery, *args, f"--precision={precision}", f"--run-name={precision}", cwd=tmp_path, timeout=180)
        assert p.returncode == 0 and "parameters identical on all 2 ranks after 2 updates" in p.stdout, explain(p)
    w, w32 = weights(tmp_path / "runs/bf16/final_model.pt"), weights(tmp_path / "runs/fp32/final_model.pt")
    assert all(v.dtype == torch.float32 and v.isfinite().all() for v in w.values())
    assert all(float(r["losses/entropy"]) > 0 for r in progress(tmp_path / "runs/bf16"))
    assert not all(torch.equal(w[k], w32[k]) for k in w)
    assert all((w[k] - w32[k]).abs().max() < 0.05 for k in w)  # two updates of lr 2e-3 (1e-3) apart at most


def test_bf16_reaches_the_update(script):
    """One ppo_update of a fixed batch in a 1-process group: under --precision bf16 the weights move otherwise
    than in fp32 (the update's forward runs under autocast), and not by much."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        moved = {}
        for precision in ("bf16", "fp32"):
            mod, args, agent, batch = make_problem(script.removesuffix(".py"), None)
            args.precision = precision
            model, optimizer = DDP(agent), torch.optim.SGD(agent.parameters(), lr=LR)
            gen = torch.Generator().manual_seed(SEED_PERM)
            mod.ppo_update(model, [optimizer], batch, args, mod.schedules_at(args, 0.0), gen)
            moved[precision] = {k: v.clone() for k, v in agent.state_dict().items()}
            del model
    finally:
        gc.collect()  # DDP's reducer goes before the group
        dist.destroy_process_group()
    a, b = moved["bf16"], moved["fp32"]
    assert not all(torch.equal(a[k], b[k]) for k in a)
    torch.testing.assert_close(a, b, rtol=0.05, atol=0.01)


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compile_trains_on_two_ranks_and_checkpoints_have_no_prefix(tmp_path, machinery):
    """--compile wraps the rollout policy and the DDP model; checkpoints still hold the plain agent's keys. The
    flag takes effect: inductor generates kernels (into a cache directory of the test's own). One script: the
    wrapping is the machinery's, and both agents are MLPs of the same shape (test_bf16_reaches_the_update
    runs both agents' forwards under autocast)."""
    args = [*SMALL, "--total-timesteps=8192", "--checkpoint-interval=1", "--compile", "--run-name=c"]
    cache = tmp_path / "inductor"
    p = torchrun(machinery, *args, cwd=tmp_path, timeout=300, TORCHINDUCTOR_CACHE_DIR=str(cache))
    assert p.returncode == 0 and "parameters identical on all 2 ranks after 2 updates" in p.stdout, explain(p)
    assert len([f for f in cache.rglob("*.py") if "def call(" in f.read_text()]) >= 2, explain(p)
    for path in (tmp_path / "runs/c/checkpoints/update_00000002.pt", tmp_path / "runs/c/final_model.pt"):
        keys = list(weights(path))
        assert keys and not any(k.startswith(("module.", "_orig_mod.")) or "._orig_mod." in k for k in keys), keys


def test_resume_continues_exactly(tmp_path, recurrent_too):
    """A run stopped after update 2 (what came later dropped) and resumed with --resume ends with the same
    weights and the same progress.csv as the uninterrupted run: model, optimizer, schedules, RNG, boards, and
    the LSTM's memory of every room on every rank; TensorBoard hides what the first session logged after it."""
    script, *agent = recurrent_too
    args = [*SMALL, *agent, "--total-timesteps=12288", "--checkpoint-interval=1"]
    p = torchrun(script, *args, "--run-name=full", cwd=tmp_path, timeout=180)
    assert p.returncode == 0, explain(p)
    full, cut = tmp_path / "runs/full", tmp_path / "runs/cut"
    shutil.copytree(full, cut)
    (cut / "checkpoints/update_00000003.pt").unlink()
    (cut / "final_model.pt").unlink()
    p = torchrun(script, *args, "--run-name=cut", "--resume", cwd=tmp_path, timeout=180)
    assert p.returncode == 0, explain(p)
    assert "resumed from runs/cut/checkpoints/update_00000002.pt at update 2, global_step 8,192" in p.stdout
    a, b = progress(full), progress(cut)
    assert [r["update"] for r in b] == ["1", "2", "3"]  # no gap, no duplicate
    clock = {"charts/SPS", "time/rollout_s", "time/update_s"}  # wall-clock columns differ
    for ra, rb in zip(a, b, strict=True):
        assert {k: v for k, v in ra.items() if k not in clock} == {k: v for k, v in rb.items() if k not in clock}
    wa, wb = weights(full / "final_model.pt"), weights(cut / "final_model.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    boards = EventAccumulator(str(cut))  # update 3, logged by both sessions, is shown once in TensorBoard
    boards.Reload()
    assert [e.step for e in boards.Scalars("charts/SPS")] == [4096, 8192, 12288]


def test_elastic_restart_resumes_after_a_worker_is_killed(tmp_path):
    """SIGKILL one worker mid-run: torchrun restarts the group, which resumes from its newest checkpoint (older
    ones are there too) in the same run directory (the default run name is stable across restarts), completes
    the run, and ends bit-identical to an uninterrupted run. The Arena with the LSTM: the restart is the
    machinery's, and what a script's rooms and memory need is in its resume test (both scripts)."""
    script, *agent = "ppo_ddp.py", "--agent=lstm"
    total_updates = 15
    args = [*SMALL, *agent, f"--total-timesteps={4096 * total_updates}", "--checkpoint-interval=3"]
    proc = start(torchrun_cmd(script, *args, launcher_args=("--standalone", "--max-restarts=1")), cwd=tmp_path)
    csv_files = lambda: list((tmp_path / "runs").glob("*/progress.csv"))  # noqa: E731
    assert wait_for(lambda: csv_files() and len(progress(csv_files()[0].parent)) >= 7, 120, proc), finish(proc, 5)
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


def test_exception_on_one_rank_ends_the_job(tmp_path, machinery):
    """Rank 1 raises at update 2 while rank 0 waits in a collective: the job ends, it does not hang."""
    t0 = time.time()
    p = torchrun(machinery, *SMALL, "--total-timesteps=40960", cwd=tmp_path, timeout=120, PPO_DDP_FAULT="1:2")
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
    """PYTHONPATH and THREADS_DIR for a launch whose processes report their threads at exit; see gloo_threads."""
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


def test_the_process_group_is_really_destroyed(tmp_path, machinery):
    """destroy_process_group() ends gloo's threads, so none is left to die with the interpreter (where, now and
    then, one aborted a finished run with SIGABRT). torch.distributed.nn binds the world group into its default
    arguments when first imported (DDP imports it through torch._dynamo): imported after init_process_group it
    kept the group, and its threads, alive in every run. The scripts import it first."""
    args = [*SMALL, "--total-timesteps=8192"]
    p = torchrun(machinery, *args, cwd=tmp_path, timeout=120, **threads_at_exit(tmp_path))
    assert p.returncode == 0, explain(p)
    assert gloo_threads(tmp_path) == {"rank0": [], "rank1": []}


def test_ctrl_c_stops_every_rank_and_keeps_the_checkpoint(tmp_path, machinery):
    proc = start(
        torchrun_cmd(machinery, *SMALL, "--total-timesteps=4096000", "--checkpoint-interval=2", "--run-name=c"),
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


def test_two_nodes_train_one_model(tmp_path, machinery):
    """Two torchrun launches, one process each, meet at a c10d rendezvous and train one model together."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = ("--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two")
    cmd = torchrun_cmd(machinery, *SMALL, "--total-timesteps=12288", "--run-name=n", nproc=1, launcher_args=launcher)
    dirs = [tmp_path / "node0", tmp_path / "node1"]  # a working directory per "machine"
    for d in dirs:
        d.mkdir()
    results = [finish(node, 180) for node in [start(cmd, cwd=d) for d in dirs]]
    assert all(r.returncode == 0 for r in results), "".join(explain(r) for r in results)
    out = "".join(r.stdout for r in results)
    assert "parameters identical on all 2 ranks after 3 updates" in out
    assert "world size 2" in out
    written = [d for d in dirs if (d / "runs/n/final_model.pt").exists()]
    assert len(written) == 1 and len(progress(written[0] / "runs/n")) == 3  # rank 0's node alone writes
    assert [bool(list(d.iterdir())) for d in dirs].count(False) == 1  # the other wrote nothing at all


def test_two_nodes_with_different_hardware_agree_on_sizes(tmp_path, machinery):
    """--num-envs 0 on two "machines" with 1 and 2 threads: each alone would pick 256 and 512 envs (256 per
    thread, the total leaves room for 512); they agree on the smallest, train together and end bit-identical
    (compared exactly: a float checksum would differ with the thread count)."""
    dirs = [tmp_path / "node0", tmp_path / "node1"]
    for d in dirs:
        d.mkdir()
    args = [*SMALL[2:], "--num-envs=0", "--num-steps=1", "--total-timesteps=102400", "--checkpoint-interval=0"]
    args.remove("--hidden-size=32")  # the default 128: enough weights that a sum's order follows the threads
    results = [finish(p, 240) for p in start_two_nodes(machinery, *args, "--run-name=h", dirs=dirs, threads=(1, 2))]
    assert all(r.returncode == 0 for r in results), "".join(explain(r) for r in results)
    assert "parameters identical on all 2 ranks after 200 updates" in results[0].stdout, explain(results[0])
    config = json.loads((dirs[0] / "runs/h/config.json").read_text())
    assert config["num_envs"] == 256 and [r["threads"] for r in config["ranks"]] == [1, 2]
    assert not (dirs[1] / "runs").exists()


def test_two_nodes_resume_from_node0s_checkpoint(tmp_path, machinery):
    """Two "machines" without a shared filesystem, stopped (Ctrl-C) after some checkpoints and relaunched with
    --resume: rank 0 reads its checkpoint and sends rank 1 its part, so both continue from it; the run ends
    with a gap-free progress.csv and the weights of an uninterrupted run, and node 1's directory stays empty."""
    total = 30
    args = [*SMALL, f"--total-timesteps={4096 * total}", "--checkpoint-interval=2", "--run-name=n"]
    dirs = [tmp_path / "node0", tmp_path / "node1", tmp_path / "full0", tmp_path / "full1"]
    for d in dirs:
        d.mkdir()
    ckpts = lambda: sorted((dirs[0] / "runs/n/checkpoints").glob("update_*.pt"))  # noqa: E731
    procs = start_two_nodes(machinery, *args, dirs=dirs[:2])
    assert wait_for(lambda: len(ckpts()) >= 2, 120, procs[0]), finish(procs[0], 5)
    for p in procs:
        os.killpg(p.pid, signal.SIGINT)
    stopped = [finish(p, 90) for p in procs]
    assert all(r.returncode != 0 for r in stopped), "".join(explain(r) for r in stopped)
    last = torch.load(ckpts()[-1], weights_only=False)["update"]
    assert last < total
    resumed = [finish(p, 240) for p in start_two_nodes(machinery, *args, "--resume", dirs=dirs[:2])]
    assert all(r.returncode == 0 for r in resumed), "".join(explain(r) for r in resumed)
    assert f"resumed from runs/n/checkpoints/update_{last:08d}.pt at update {last}" in resumed[0].stdout
    assert [int(r["update"]) for r in progress(dirs[0] / "runs/n")] == list(range(1, total + 1))
    assert not list(dirs[1].iterdir())  # rank 1 wrote nothing, not even an empty runs/
    full = [finish(p, 240) for p in start_two_nodes(machinery, *args, dirs=dirs[2:])]
    assert all(r.returncode == 0 for r in full), "".join(explain(r) for r in full)
    wa, wb = weights(dirs[0] / "runs/n/final_model.pt"), weights(dirs[2] / "runs/n/final_model.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("name", ["ppo_ddp_snake", "ppo_ddp"])
def test_cpu_shares_are_disjoint_and_cover_equal_slices(name):
    share = importlib.import_module(name).cpu_share
    cpus = [3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert [share(cpus, r, 4) for r in range(4)] == [[3, 4], [5, 6], [7, 8], [9, 10]]
    assert [share(cpus, r, 1) for r in range(1)] == [cpus]
    assert [share([0, 1], r, 3) for r in range(3)] == [[0], [1], [0]]  # fewer CPUs than ranks: round-robin


@pytest.mark.parametrize("name", ["ppo_ddp_snake", "ppo_ddp"])
def test_auto_num_envs_leaves_enough_updates_on_any_number_of_gpus(name):
    """The default command on 1 to 64 GPUs (65,536 envs fit each) makes >= 100 updates, not 1 or 2; on 2 CPU
    ranks with one thread each it keeps 256 envs per rank."""
    mod = importlib.import_module(name)
    args = mod.Args()
    for world_size in (1, 2, 4, 8, 64):
        n = mod.auto_num_envs(65536, args, world_size)
        assert n & (n - 1) == 0 and n >= 1
        updates = mod.derived_sizes(mod.Args(num_envs=n), world_size)["num_updates"]
        assert mod.AUTO_MIN_UPDATES <= updates < 2 * mod.AUTO_MIN_UPDATES or n == 1, (world_size, n, updates)
    assert mod.auto_num_envs(256, args, 2) == 256
    assert mod.auto_num_envs(65536, mod.Args(total_timesteps=10), 4) == 1  # never 0


def test_nan_loss_stops_every_rank(tmp_path, machinery):
    p = torchrun(machinery, *SMALL, "--total-timesteps=40960", "--learning-rate=1e30", cwd=tmp_path, timeout=120)
    assert p.returncode != 0, explain(p)
    assert p.stderr.count("error: non-finite gradient norm (nan)") == 2  # one line from each rank
    assert p.stderr.count("training stopped on every rank") == 2


def test_corrupt_checkpoint_and_failed_write(tmp_path, machinery):
    """A truncated checkpoint and one that unpickles but lacks a key: --eval-checkpoint names each (exit 2), and
    resume falls back past both to the last good one. A checkpoint that cannot be written (here its temporary
    name is taken by a directory; a full disk fails the same way) stops every rank with one line, and leaves
    the earlier checkpoints and progress.csv as they were."""
    args = [*SMALL, "--total-timesteps=12288", "--checkpoint-interval=1", "--run-name=k"]
    p = torchrun(machinery, *args, cwd=tmp_path, timeout=180)
    assert p.returncode == 0, explain(p)
    ckpts = tmp_path / "runs/k/checkpoints"
    truncated, lacking = ckpts / "update_00000003.pt", ckpts / "update_00000002.pt"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    ckpt = torch.load(lacking, weights_only=False)
    del ckpt["n_actions"]
    torch.save(ckpt, lacking)
    for bad, why in ((truncated, ""), (lacking, ": it lacks n_actions")):
        p = python(machinery, "--eval-checkpoint", str(bad), timeout=60)
        assert p.returncode == 2 and p.stderr.startswith(f"error: cannot load checkpoint {bad}{why}"), explain(p)
    (ckpts / "update_00000002.pt.tmp").mkdir()  # the resumed run's next checkpoint cannot be written
    first_row = progress(tmp_path / "runs/k")[0]
    p = torchrun(machinery, *args, "--resume", cwd=tmp_path, timeout=180)
    assert p.returncode == 1, explain(p)
    assert p.stderr.count("falling back to the previous checkpoint") == 2  # rank 0 alone reads, once per bad file
    assert "resumed from runs/k/checkpoints/update_00000001.pt" in p.stdout
    failed = "error: cannot write checkpoint runs/k/checkpoints/update_00000002.pt: "
    assert p.stderr.count(failed) == 2 and p.stderr.count("training stopped on every rank") == 2, explain(p)
    assert torch.load(ckpts / "update_00000001.pt", weights_only=False)["update"] == 1
    rows = progress(tmp_path / "runs/k")  # update 2 was done again and logged before its checkpoint failed
    assert [r["update"] for r in rows] == ["1", "2"] and rows[0] == first_row
    (ckpts / "update_00000002.pt.tmp").rmdir()
    p = torchrun(machinery, *args, "--resume", cwd=tmp_path, timeout=180)
    assert p.returncode == 0, explain(p)
    assert [int(r["update"]) for r in progress(tmp_path / "runs/k")] == [1, 2, 3]


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


def test_sigterm_during_a_checkpoint_write(tmp_path):
    """A scheduler's SIGTERM reaches torchrun while rank 0 is half-way through writing checkpoint 2 (torch.save
    stalled 4 s from outside, by a sitecustomize on PYTHONPATH): the write completes, the ranks stop after the
    next update with its checkpoint, all three load, and --resume continues from the newest to the end."""
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


def test_resume_with_changed_schedule_is_refused(tmp_path, machinery):
    """Also: a run name that holds a run is not reused without --resume (exit 2 on every rank, nothing touched)."""
    p = torchrun(
        machinery,
        *SMALL,
        "--total-timesteps=8192",
        "--checkpoint-interval=1",
        "--run-name=s",
        cwd=tmp_path,
        timeout=180,
    )
    assert p.returncode == 0, explain(p)
    files = {f: f.read_bytes() for f in (tmp_path / "runs/s").rglob("*") if f.is_file()}
    p = torchrun(machinery, *SMALL, "--total-timesteps=8192", "--run-name=s", cwd=tmp_path, timeout=120)
    assert p.returncode != 0 and "exitcode: 2" in p.stderr
    assert p.stderr.count("error: runs/s already holds a run: continue it with --resume") == 2, explain(p)
    assert files == {f: f.read_bytes() for f in (tmp_path / "runs/s").rglob("*") if f.is_file()}
    p = torchrun(machinery, *SMALL, "--total-timesteps=16384", "--run-name=s", "--resume", cwd=tmp_path, timeout=120)
    assert p.returncode != 0 and "exitcode: 2" in p.stderr
    assert p.stderr.count("was written with total_timesteps=8192; resume with the same value") == 2
