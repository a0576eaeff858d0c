"""Several nodes: two torchrun launches train one model, machines with different hardware agree on the sizes,
a two-node run resumes from node 0's checkpoint without a shared filesystem; CPU shares and --num-envs 0."""

import importlib
import json
import os
import signal

import pytest
import torch
from helpers import (
    SMALL,
    explain,
    finish,
    free_port,
    progress,
    start,
    start_two_nodes,
    torchrun_cmd,
    wait_for,
    weights,
)


@pytest.mark.slow
def test_two_nodes_train_one_model(tmp_path, operations):
    """Two torchrun launches, one process each, meet at a c10d rendezvous and train one model together."""
    launcher = (
        "--nnodes=2",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        "--rdzv-id=two",
    )
    cmd = torchrun_cmd(
        operations, *SMALL, "--total-timesteps=12288", "--run-name=n", nproc=1, launcher_args=launcher
    )
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


@pytest.mark.slow
def test_two_nodes_with_different_hardware_agree_on_sizes(tmp_path, operations):
    """--num-envs 0 on two "machines" with 1 and 2 threads: each alone would pick 256 and 512 envs (256 per
    thread, the total leaves room for 512); they agree on the smallest, train together and end bit-identical
    (compared exactly: a float checksum would differ with the thread count)."""
    dirs = [tmp_path / "node0", tmp_path / "node1"]
    for d in dirs:
        d.mkdir()
    args = [
        *SMALL[2:],
        "--num-envs=0",
        "--num-steps=1",
        "--total-timesteps=102400",
        "--checkpoint-interval=0",
    ]
    args.remove("--hidden-size=32")  # the default 128: enough weights that a sum's order follows the threads
    results = [
        finish(p, 240) for p in start_two_nodes(operations, *args, "--run-name=h", dirs=dirs, threads=(1, 2))
    ]
    assert all(r.returncode == 0 for r in results), "".join(explain(r) for r in results)
    assert "parameters identical on all 2 ranks after 200 updates" in results[0].stdout, explain(results[0])
    config = json.loads((dirs[0] / "runs/h/config.json").read_text())
    assert config["num_envs"] == 256 and [r["threads"] for r in config["ranks"]] == [1, 2]
    assert not (dirs[1] / "runs").exists()


@pytest.mark.slow
def test_two_nodes_resume_from_node0s_checkpoint(tmp_path, operations):
    """Two "machines" without a shared filesystem, stopped (Ctrl-C) after some checkpoints and relaunched with
    --resume: rank 0 reads its checkpoint and sends rank 1 its part, so both continue from it; the run ends
    with a gap-free progress.csv and the weights of an uninterrupted run, and node 1's directory stays
    empty."""
    total = 16
    args = [*SMALL, f"--total-timesteps={4096 * total}", "--checkpoint-interval=2", "--run-name=n"]
    dirs = [tmp_path / "node0", tmp_path / "node1", tmp_path / "full0", tmp_path / "full1"]
    for d in dirs:
        d.mkdir()
    ckpts = lambda: sorted((dirs[0] / "runs/n/checkpoints").glob("update_*.pt"))  # noqa: E731
    procs = start_two_nodes(operations, *args, dirs=dirs[:2])
    assert wait_for(lambda: len(ckpts()) >= 2, 120, procs[0]), finish(procs[0], 5)
    for p in procs:
        os.killpg(p.pid, signal.SIGINT)
    stopped = [finish(p, 90) for p in procs]
    assert all(r.returncode != 0 for r in stopped), "".join(explain(r) for r in stopped)
    last = torch.load(ckpts()[-1], weights_only=False)["update"]
    assert last < total
    resumed = [finish(p, 240) for p in start_two_nodes(operations, *args, "--resume", dirs=dirs[:2])]
    assert all(r.returncode == 0 for r in resumed), "".join(explain(r) for r in resumed)
    assert f"resumed from runs/n/checkpoints/update_{last:08d}.pt at update {last}" in resumed[0].stdout
    assert [int(r["update"]) for r in progress(dirs[0] / "runs/n")] == list(range(1, total + 1))
    assert not list(dirs[1].iterdir())  # rank 1 wrote nothing, not even an empty runs/
    full = [finish(p, 240) for p in start_two_nodes(operations, *args, dirs=dirs[2:])]
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
        updates = args.total_timesteps // (n * args.num_steps * world_size)
        assert mod.AUTO_MIN_UPDATES <= updates < 2 * mod.AUTO_MIN_UPDATES or n == 1, (world_size, n, updates)
    assert mod.auto_num_envs(256, args, 2) == 256
    assert mod.auto_num_envs(65536, mod.Args(total_timesteps=10), 4) == 1  # never 0
