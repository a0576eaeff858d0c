"""Reproduce DistributedDataParallel's unused-parameter failure, and both fixes.

A loss that reads only some of a policy's outputs (an actor-only PPO loss, GRPO, a supervised loss)
leaves the other heads' parameters without a gradient. DDP then stops at the next forward with
"Expected to have finished reduction in the prior iteration ...". Two fixes:

  * the hack:        loss = loss + 0.0 * out.sum() for every unused output (unused heads get zero grads)
  * find_unused:     DistributedDataParallel(..., find_unused_parameters=True) (their grads stay None)

static_graph=True is no fix on its own here: the unused heads' outputs are returned by forward, so
DDP's first iteration records them as used, and the third iteration fails the same way.

  torchrun --standalone --nproc-per-node=2 test_unused_params.py                  # hack: succeeds
  torchrun --standalone --nproc-per-node=2 test_unused_params.py --no-hack        # fails, names the params
  torchrun --standalone --nproc-per-node=2 test_unused_params.py --no-hack --find-unused   # succeeds
  torchrun --standalone --nproc-per-node=2 test_unused_params.py --all            # all scenarios, a table
  python test_unused_params.py --no-hack                                          # world size 1 fails too
"""

import gc
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  first, or destroy_process_group frees nothing (docs/correctness.md)
import torch.nn as nn
import tyro
from torch.nn.parallel import DistributedDataParallel as DDP


@dataclass
class Args:
    hack: bool = True
    """add `0.0 * out.sum()` of every output the loss does not use (`--no-hack` drops it)"""
    find_unused: bool = False
    """DDP(find_unused_parameters=True): DDP finds the unused parameters itself after each backward"""
    static_graph: bool = False
    """DDP(static_graph=True): the set of used parameters is learned once and assumed fixed"""
    iterations: int = 5
    """training iterations (forward, backward, optimizer step); fails at the 2nd (3rd with static graph)"""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """process-group backend: auto = nccl when every process of this node has a GPU of its own, else gloo"""
    dist_timeout: float = 60.0
    """seconds a collective may wait before the process group gives up (no run can hang)"""
    seed: int = 1
    """seed of the model initialisation and the synthetic batches"""
    all: bool = False
    """run every scenario as its own torchrun subprocess and print expected vs observed"""


# -- the model: an actor-critic with an auxiliary head, like a policy that predicts extra targets --
class ActorCritic(nn.Module):
    def __init__(self, obs_dim: int = 16, hidden: int = 32, n_actions: int = 4, aux_dim: int = 8):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh())
        self.actor = nn.Linear(hidden, n_actions)
        self.critic = nn.Linear(hidden, 1)
        self.aux = nn.Linear(hidden, aux_dim)

    def forward(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.encoder(obs)
        return {"logits": self.actor(h), "value": self.critic(h).squeeze(-1), "aux": self.aux(h)}


USED_OUTPUTS = ("logits",)  # the loss below reads only the actor


def actor_only_loss(
    out: dict[str, torch.Tensor], actions: torch.Tensor, advantages: torch.Tensor, hack: bool
):
    """A policy-gradient loss with an entropy bonus that ignores the value and aux heads."""
    dist_ = torch.distributions.Categorical(logits=out["logits"])
    loss = -(dist_.log_prob(actions) * advantages).mean() - 0.01 * dist_.entropy().mean()
    if hack:  # touch every unused output so that DDP sees a gradient (of zeros) for every parameter
        for key, value in out.items():
            if key not in USED_OUTPUTS and value.requires_grad:
                loss = loss + 0.0 * value.sum()
    return loss


def synthetic_batch(gen: torch.Generator, device: torch.device, n: int = 64):
    obs = torch.randn(n, 16, generator=gen).to(device)
    actions = torch.randint(0, 4, (n,), generator=gen).to(device)
    advantages = torch.randn(n, generator=gen).to(device)
    return obs, actions, advantages


def unused_parameter_names(model: nn.Module, batch, hack: bool) -> list[str]:
    """Fully qualified names of the parameters that get no gradient from the loss, found by autograd."""
    obs, actions, advantages = batch
    loss = actor_only_loss(model(obs), actions, advantages, hack)
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad], strict=True)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [n for n, g in zip(names, grads, strict=True) if g is None]


def mode_name(args: Args) -> str:
    parts = ["hack" if args.hack else "no hack"]
    parts += ["find_unused_parameters=True"] if args.find_unused else []
    parts += ["static_graph=True"] if args.static_graph else []
    return ", ".join(parts)


# -- one scenario, run inside the process group --
def train(args: Args, rank: int, world_size: int, device: torch.device) -> int:
    torch.manual_seed(args.seed)
    model = ActorCritic().to(device)  # same seed on every rank; DDP also broadcasts rank 0's weights
    ddp = DDP(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=args.find_unused,
        static_graph=args.static_graph,
    )
    optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)  # each rank its own data
    batch = None
    try:
        for _ in range(args.iterations):
            batch = synthetic_batch(gen, device)
            optimizer.zero_grad(set_to_none=True)
            loss = actor_only_loss(ddp(batch[0]), batch[1], batch[2], args.hack)  # training forward via DDP
            loss.backward()
            optimizer.step()
    except RuntimeError as e:
        if rank == 0:
            unused = unused_parameter_names(model, batch, args.hack)
            print(f"❌ RuntimeError: {str(e).strip().splitlines()[0]}")
            print(f"   parameters that received no gradient: {', '.join(unused) or '(none found)'}")
            if args.static_graph:  # observed: static_graph counts every output of forward as used
                print("   static_graph=True does not cover outputs that forward returns but the loss ignores")
            print(
                "   fix: --find-unused (DDP(find_unused_parameters=True)), or keep the hack (drop --no-hack)"
            )
        return 1

    # -- after success: identical weights on every rank, and what the unused parameters' .grad holds --
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    lo, hi = flat.clone(), flat.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    identical = bool(torch.equal(lo, hi))
    if rank == 0:
        unused = unused_parameter_names(model, batch, hack=False)
        grads = dict(model.named_parameters())
        print(f"✅ SUCCESS: {mode_name(args)}; {args.iterations} iterations; world size {world_size}")
        print(f"   parameters identical on all {world_size} ranks: {'yes' if identical else 'NO'}")
        for name in unused:
            g = grads[name].grad
            state = "None" if g is None else ("zeros" if not g.any() else "nonzero")
            print(f"   {name}.grad: {state}")
    return 0 if identical else 1


# -- --all: every scenario as its own torchrun subprocess --
SCENARIOS = [  # (flags, expected verdict)
    ([], "SUCCESS"),
    (["--no-hack"], "RuntimeError"),
    (["--no-hack", "--find-unused"], "SUCCESS"),
    # static_graph alone is no fix (docs/unused-parameters.md)
    (["--no-hack", "--static-graph"], "RuntimeError"),
    (["--static-graph"], "SUCCESS"),
]


def run_all(args: Args, nproc: int) -> int:
    from rich.console import Console
    from rich.table import Table

    launcher_vars = {
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "ROLE_RANK",
        "ROLE_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    }
    env = {k: v for k, v in os.environ.items() if k not in launcher_vars and not k.startswith("TORCHELASTIC")}
    common = [
        f"--iterations={args.iterations}",
        f"--backend={args.backend}",
        f"--seed={args.seed}",
        f"--dist-timeout={args.dist_timeout}",
    ]
    table = Table(title=f"DDP unused parameters, {nproc} processes")
    for col in ("flags", "expected", "observed", "exit", "match"):
        table.add_column(col)
    all_match = True
    for flags, expected in SCENARIOS:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            __file__,
            *flags,
            *common,
        ]
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=4 * args.dist_timeout)
            out, code = p.stdout, p.returncode
        except subprocess.TimeoutExpired:
            out, code = "", "timeout"
        m = re.search(r"(SUCCESS|RuntimeError)", out)
        observed = m.group(1) if m else "no verdict"
        match = observed == expected and code == (0 if expected == "SUCCESS" else 1)
        all_match &= match
        table.add_row(" ".join(flags) or "(default)", expected, observed, str(code), "✅" if match else "❌")
    Console().print(table)
    print("every scenario matches" if all_match else "MISMATCH: see the table")
    return 0 if all_match else 1


def main() -> int:
    args = tyro.cli(Args)
    if args.iterations < 3:
        print(
            "error: --iterations must be at least 3 (failures show at the 2nd, or 3rd with --static-graph)",
            file=sys.stderr,
        )
        return 2
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if args.all:  # rank 0 launches the scenarios; the other ranks have nothing to do
        return run_all(args, nproc=max(world_size, 2)) if rank == 0 else 0

    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if args.backend == "nccl" and torch.cuda.device_count() < local_world:
        n = torch.cuda.device_count()
        print(
            f"error: --backend nccl needs a GPU per process: {local_world} processes, {n} GPU(s)",
            file=sys.stderr,
        )
        return 2
    backend = args.backend
    # NCCL only with a GPU for every process of this node (--all starts 2 on a 1-GPU machine)
    if backend == "auto":
        backend = "nccl" if torch.cuda.device_count() >= local_world else "gloo"
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    timeout = timedelta(seconds=args.dist_timeout)
    if "RANK" in os.environ:  # launched by torchrun
        dist.init_process_group(backend, timeout=timeout, device_id=device if backend == "nccl" else None)
    else:  # plain python: a process group of one, no port needed
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    try:
        return train(args, rank, world_size, device)
    finally:
        gc.collect()  # free DDP's reducer while the group exists: left to exit, it can abort with SIGABRT
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
