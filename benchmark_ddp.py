"""Which fix for DDP's unused-parameter error is fastest on *this* machine, with confidence intervals.

A loss that reads only the actor's outputs leaves the critic and auxiliary heads without gradients, and
DistributedDataParallel then stops with "Expected to have finished reduction in the prior iteration".
The approaches compared, each with its own DDP copy of one model, all in one process group:

  find_unused   DDP(find_unused_parameters=True), loss on the actor's outputs only
  hack          find_unused_parameters=False, loss + 0.0 * out.sum() of every unused output
  all_used      every output contributes to the loss (a real critic and auxiliary loss)
  static_graph  DDP(static_graph=True), unused parameters left unused
  none          no fix: reported with its error, never timed

An approach that raises during warmup is reported with its error and never timed: `none` always, and with
torch 2.13 `static_graph` too: its first iteration records the heads that forward returns as used (with
TORCH_DISTRIBUTED_DEBUG=INFO it lists no unused parameter), and later iterations give them no gradient.
Approaches are timed in interleaved blocks (A B C D A B C D ...) so that machine drift hits all alike.
Per iteration the slowest rank counts (max over ranks, phase by phase). A 95% CI is a percentile bootstrap
over rounds (one round = one block of every approach); a ratio's CI resamples the same rounds for both
approaches, so it is paired. An approach is called faster or slower than find_unused only when the two
CIs are disjoint and the ratio's CI excludes 1.

    torchrun --standalone --nproc-per-node=2 benchmark_ddp.py --json-out bench.json
    python benchmark_ddp.py --approaches find_unused hack     # world size 1
"""

import copy
import datetime
import gc
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from itertools import pairwise

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  first, or destroy_process_group frees nothing (docs/correctness.md)
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.nn.parallel import DistributedDataParallel as DDP

APPROACHES = ("find_unused", "hack", "all_used", "static_graph", "none")
LABELS = {
    "find_unused": "`find_unused_parameters=True`",
    "hack": "`0.0 * sum()` hack",
    "all_used": "All params used",
    "static_graph": "`static_graph=True`",
    "none": "no fix",
}
PHASES = ("zero_grad", "forward", "loss_compute", "backward", "optimizer", "total")


@dataclass
class Args:
    approaches: tuple[str, ...] = APPROACHES
    """approaches to run, any of: find_unused hack all_used static_graph none"""
    iterations: int = 500
    """timed iterations per approach, a multiple of --block-size"""
    warmup: int = 50
    """untimed iterations per approach before timing (at least 3: a failing approach fails by then)"""
    block_size: int = 10
    """consecutive iterations of one approach before the next approach's block"""
    batch_size: int = 256
    """samples per rank per iteration (global batch = batch_size * world size)"""
    obs_dim: int = 512
    """observation size (input of the encoder)"""
    hidden_dim: int = 512
    """width of the encoder layers and of the actor's and critic's hidden layer"""
    encoder_layers: int = 3
    """Linear+ReLU layers of the shared encoder"""
    action_dim: int = 64
    """actor outputs (logits of a categorical policy)"""
    aux_heads: int = 2
    """auxiliary heads (Linear(hidden_dim, aux_dim)), unused by the actor loss"""
    aux_dim: int = 32
    """outputs of each auxiliary head"""
    learning_rate: float = 1e-3
    """Adam learning rate"""
    seed: int = 1
    """seed of the model initialisation (same on every rank) and of the synthetic data (per rank)"""
    cuda: bool = True
    """use cuda:LOCAL_RANK and NCCL when CUDA is present, else the CPU and gloo"""
    bootstrap: int = 10000
    """bootstrap resamples for the confidence intervals"""
    dist_timeout: int = 300
    """seconds a collective may wait before the process group gives up"""
    json_out: str | None = None
    """write every figure (and each iteration's time) to this JSON file"""


def validate(args: Args) -> str | None:
    """The first problem with the arguments, or None; a pure function, so every rank agrees."""
    if not args.approaches or len(set(args.approaches)) < len(args.approaches):
        return "--approaches must name at least one approach, each once"
    if unknown := [a for a in args.approaches if a not in APPROACHES]:
        return f"unknown approach {unknown[0]!r}; choose from {' '.join(APPROACHES)}"
    positive = ("iterations", "block_size", "batch_size", "obs_dim", "hidden_dim", "encoder_layers")
    positive += ("action_dim", "aux_dim", "learning_rate", "bootstrap", "dist_timeout")
    for name in positive:
        if getattr(args, name) <= 0:
            return f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}"
    if args.aux_heads < 0:
        return f"--aux-heads must be >= 0, got {args.aux_heads}"
    if args.warmup < 3:
        return (
            f"--warmup must be >= 3 (DDP reports an unused parameter by the 3rd iteration), got {args.warmup}"
        )
    if args.iterations % args.block_size or args.iterations < 2 * args.block_size:
        n, b = args.iterations, args.block_size
        return f"--iterations ({n}) must be a multiple of --block-size ({b}), and at least 2 blocks"
    return None


# -- the policy: shared encoder, actor, critic and auxiliary heads --
class Policy(nn.Module):
    def __init__(self, args: Args):
        super().__init__()
        dims = [args.obs_dim] + [args.hidden_dim] * args.encoder_layers
        self.encoder = nn.Sequential(*[m for i, o in pairwise(dims) for m in (nn.Linear(i, o), nn.ReLU())])
        h = args.hidden_dim
        self.actor = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, args.action_dim))
        self.critic = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))
        self.aux = nn.ModuleList(nn.Linear(h, args.aux_dim) for _ in range(args.aux_heads))

    def forward(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.encoder(obs)
        out = {"logits": self.actor(h), "value": self.critic(h).squeeze(-1)}
        return out | {f"aux{i}": head(h) for i, head in enumerate(self.aux)}


def synthetic_batch(args: Args, device: torch.device) -> dict[str, torch.Tensor]:
    n = args.batch_size
    return {
        "obs": torch.randn(n, args.obs_dim, device=device),
        "actions": torch.randint(0, args.action_dim, (n, 1), device=device),
        "advantages": torch.randn(n, device=device),
        "returns": torch.randn(n, device=device),
        "aux_targets": torch.randn(n, args.aux_dim, device=device),
    }


def compute_loss(approach: str, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Actor-only PPO-style loss (policy gradient + entropy bonus), plus what the approach adds."""
    logp = F.log_softmax(out["logits"], dim=-1)
    pg_loss = -(logp.gather(1, batch["actions"]).squeeze(1) * batch["advantages"]).mean()
    loss = pg_loss + 0.01 * (logp.exp() * logp).sum(-1).mean()
    if approach == "hack":  # touch every unused output: each parameter gets a (zero) gradient
        for k, v in out.items():
            if k != "logits":
                loss = loss + 0.0 * v.sum()
    elif approach == "all_used":  # a real value loss and auxiliary losses
        loss = loss + 0.5 * F.mse_loss(out["value"], batch["returns"])
        for k in out:
            if k.startswith("aux"):
                loss = loss + F.mse_loss(out[k], batch["aux_targets"])
    return loss


# -- one training iteration, timed phase by phase --
def clock(sync: bool) -> float:
    if sync:  # CUDA runs asynchronously: wait for the device so each phase holds its own work
        torch.cuda.synchronize()
    return time.perf_counter()


def iteration(ddp: DDP, opt: torch.optim.Optimizer, approach: str, batch: dict, sync: bool) -> list[float]:
    """One step; returns ms per phase in PHASES order (total = zero_grad through optimizer)."""
    t = [clock(sync)]
    opt.zero_grad(set_to_none=True)
    t.append(clock(sync))
    out = ddp(batch["obs"])  # with find_unused, DDP searches the autograd graph at the end of forward
    t.append(clock(sync))
    loss = compute_loss(approach, out, batch)
    t.append(clock(sync))
    loss.backward()  # holds DDP's gradient all-reduce, and marking unused parameters ready
    t.append(clock(sync))
    opt.step()
    t.append(clock(sync))
    return [1e3 * (b - a) for a, b in pairwise(t)] + [1e3 * (t[-1] - t[0])]


def grad_census(ddp: DDP, opt: torch.optim.Optimizer, approach: str, batch: dict, sync: bool) -> dict:
    """One more (untimed) iteration: whose .grad ends it None / zero-filled / nonzero, whom Adam stepped."""
    steps_before = {p: float(s["step"]) for p, s in opt.state.items()}
    iteration(ddp, opt, approach, batch, sync)
    params = list(ddp.parameters())
    stepped = [p for p, s in opt.state.items() if float(s["step"]) != steps_before.get(p)]
    return {
        "param_tensors": len(params),
        "param_elements": sum(p.numel() for p in params),
        "grad_none": sum(p.grad is None for p in params),
        "grad_zero": sum(p.grad is not None and not p.grad.any() for p in params),
        "grad_nonzero": sum(p.grad is not None and bool(p.grad.any()) for p in params),
        "stepped_tensors": len(stepped),
        "stepped_elements": sum(p.numel() for p in stepped),
    }


def replicas_identical(ddp: DDP) -> bool:
    """True when every rank holds the same weights (DDP did synchronise the gradients)."""
    flat = torch.cat([p.detach().reshape(-1) for p in ddp.parameters()])
    lo, hi = flat.clone(), flat.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))


# -- statistics --
def verdict(ci: np.ndarray, base_ci: np.ndarray, ratio_ci: np.ndarray) -> str:
    """Faster or slower only when both CIs are disjoint and the paired ratio's CI excludes 1."""
    faster, slower = ratio_ci[1] < 1, ratio_ci[0] > 1
    if faster and ci[1] < base_ci[0]:
        return "faster"
    if slower and ci[0] > base_ci[1]:
        return "slower"
    if faster or slower:  # drift widens each CI; pairing by round removes it from the ratio
        return (
            "no significant difference (CIs overlap; "
            f"the paired ratio says {'faster' if faster else 'slower'})"
        )
    return "no significant difference"


def statistics(ms: np.ndarray, names: list[str], baseline: str, rounds: int, n_boot: int, seed: int) -> dict:
    """ms[a, i, p]: approach a, iteration i, phase p, slowest rank. Mean, median, std, bootstrap CIs."""
    blocks = ms.reshape(len(names), rounds, -1, len(PHASES)).mean(2)  # [a, round, p]
    weights = np.random.default_rng(seed).multinomial(rounds, np.full(rounds, 1 / rounds), n_boot) / rounds
    boot = np.einsum("br,arp->abp", weights, blocks)  # resampled means, the same rounds for every approach
    mean, b = blocks.mean(1), names.index(baseline)
    ci = np.percentile(boot, [2.5, 97.5], axis=1).transpose(1, 2, 0)  # [a, p, 2]
    ratio_ci = np.percentile(boot / boot[b], [2.5, 97.5], axis=1).transpose(1, 2, 0)
    return {
        name: {
            phase: {
                "mean": float(mean[a, p]),
                "median": float(np.median(ms[a, :, p])),
                "std": float(ms[a, :, p].std(ddof=1)),
                "ci95": ci[a, p].tolist(),
                "ratio": float(mean[a, p] / mean[b, p]),
                "ratio_ci95": ratio_ci[a, p].tolist(),
                "verdict": "baseline" if a == b else verdict(ci[a, p], ci[b, p], ratio_ci[a, p]),
            }
            for p, phase in enumerate(PHASES)
        }
        for a, name in enumerate(names)
    }


# -- markdown tables --
def pct(r: float) -> str:
    return f"{100 * (r - 1):+.1f}%"


def render(results: dict, baseline: str | None, machine: str) -> str:
    timed = [n for n, r in results.items() if r["status"] == "ok"]
    lines = [
        f"| Approach | Time (ms/iter) | 95% CI | median | std | vs {baseline} [95% CI] | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if r["status"] != "ok":
            fails = f"fails (iteration {r['failed_at_iteration']})"
            lines.append(f"| {LABELS[name]} | {fails} | — | — | — | — | {r['error']} |")
            continue
        s = r["phases"]["total"]
        vs = (
            "baseline"
            if name == baseline
            else f"{pct(s['ratio'])} [{pct(s['ratio_ci95'][0])}, {pct(s['ratio_ci95'][1])}]"
        )
        lines.append(
            f"| {LABELS[name]} | {s['mean']:.3f} | [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] "
            f"| {s['median']:.3f} | {s['std']:.3f} | {vs} | {s['verdict']} |"
        )
    if timed:
        lines += ["", f"| Phase (ms, mean) | {' | '.join(timed)} |", "|---" * (len(timed) + 1) + "|"]
        for phase in PHASES:
            cells = []
            for n in timed:
                s = results[n]["phases"][phase]
                cells.append(f"{s['mean']:.3f}" + ("" if n == baseline else f" ({pct(s['ratio'])})"))
            lines.append(f"| {phase} | {' | '.join(cells)} |")
        lines += [
            "",
            "| Approach | param tensors | `.grad` None | `.grad` zero-filled | `.grad` nonzero "
            "| stepped by Adam (tensors / elements) |",
            "|---|---|---|---|---|---|",
        ]
        for n in timed:
            g = results[n]["grads"]
            lines.append(
                f"| {LABELS[n]} | {g['param_tensors']} | {g['grad_none']} | {g['grad_zero']} "
                f"| {g['grad_nonzero']} | {g['stepped_tensors']} / {g['stepped_elements']:,} |"
            )
    return "\n".join([machine, "", *lines])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


# -- the benchmark, inside the process group --
def benchmark(args: Args, rank: int, world: int, device: torch.device) -> dict | None:
    sync = device.type == "cuda"
    torch.manual_seed(args.seed)  # the same initial weights on every rank and for every approach
    model = Policy(args).to(device)
    ids = [device.index] if sync else None
    units = {
        a: DDP(
            copy.deepcopy(model),
            device_ids=ids,
            find_unused_parameters=a == "find_unused",
            static_graph=a == "static_graph",
        )
        for a in args.approaches
    }
    opts = {a: torch.optim.Adam(ddp.parameters(), lr=args.learning_rate) for a, ddp in units.items()}
    torch.manual_seed(args.seed * 1000 + rank)  # each rank its own synthetic data
    rounds = args.iterations // args.block_size
    if rank == 0:
        n = sum(p.numel() for p in model.parameters())
        print(
            f"model: {n:,} parameters; batch {args.batch_size} per rank ({args.batch_size * world} global); "
            f"{args.warmup} warmup + {args.iterations} timed iterations per approach in {rounds} rounds "
            f"of {args.block_size}",
            flush=True,
        )

    # warmup, untimed; an approach that raises (as `none` must) is reported and never timed.
    # DDP's unused-parameter error is raised at the same forward on every rank, so all ranks agree.
    failed = {}
    for a in args.approaches:
        for i in range(args.warmup):
            try:
                iteration(units[a], opts[a], a, synthetic_batch(args, device), sync)
            except RuntimeError as e:
                failed[a] = {
                    "status": "failed",
                    "failed_at_iteration": i + 1,
                    "error": "RuntimeError: " + ". ".join(str(e).split(". ")[:2]) + ".",
                }
                break
    timed = [a for a in args.approaches if a not in failed]

    # timed rounds: one block of each approach per round
    ms = np.zeros((len(timed), args.iterations, len(PHASES)))
    for r in range(rounds):
        for a, name in enumerate(timed):
            for i in range(r * args.block_size, (r + 1) * args.block_size):
                ms[a, i] = iteration(units[name], opts[name], name, synthetic_batch(args, device), sync)
        if rank == 0 and (r + 1) % max(1, rounds // 5) == 0:
            print(f"round {r + 1}/{rounds}", flush=True)
    grads = {a: grad_census(units[a], opts[a], a, synthetic_batch(args, device), sync) for a in timed}
    identical = {a: replicas_identical(units[a]) for a in timed}

    # every rank's times to every rank (one collective); rank 0 keeps the slowest rank per iteration
    local = torch.tensor(ms, device=device)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    if rank != 0:
        return None
    per_rank = torch.stack(gathered).cpu().numpy()
    baseline = "find_unused" if "find_unused" in timed else (timed[0] if timed else None)
    stats = statistics(per_rank.max(0), timed, baseline, rounds, args.bootstrap, args.seed) if timed else {}
    results = {}
    for a in args.approaches:
        if a in failed:
            results[a] = failed[a]
            continue
        k = timed.index(a)
        results[a] = {
            "status": "ok",
            "phases": stats[a],
            "grads": grads[a],
            "replicas_identical": identical[a],
            "per_rank_total_mean_ms": per_rank[:, k, :, -1].mean(1).tolist(),
            "iterations_ms": {
                p: np.round(per_rank[:, k, :, j].max(0), 5).tolist() for j, p in enumerate(PHASES)
            },
        }
    return {"baseline": baseline, "approaches": results}


def main() -> None:
    args = tyro.cli(Args)
    if error := validate(args):
        print(f"benchmark_ddp.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    env = {
        k: int(os.environ.get(k, d))
        for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1))
    }
    rank, world = env["RANK"], env["WORLD_SIZE"]
    use_cuda = args.cuda and torch.cuda.is_available()
    device = torch.device(f"cuda:{env['LOCAL_RANK']}" if use_cuda else "cpu")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(device)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env["LOCAL_WORLD_SIZE"]))
    pg = {"timeout": datetime.timedelta(seconds=args.dist_timeout), "device_id": device if use_cuda else None}
    if "RANK" in os.environ:  # torchrun
        dist.init_process_group(backend, **pg)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, **pg)
    try:
        out = benchmark(args, rank, world, device)
        if out is not None:
            machine = {
                "device": str(device),
                "device_name": torch.cuda.get_device_name(device) if use_cuda else cpu_name(),
                "cpu_cores": os.cpu_count(),
                "backend": backend,
                "world_size": world,
                "torch": torch.__version__,
                "threads_per_rank": torch.get_num_threads(),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            line = "Machine: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in machine.items())
            print(render(out["approaches"], out["baseline"], line), flush=True)
            method = (
                "per iteration and phase the slowest rank's time (max over ranks); 95% CIs: percentile "
                f"bootstrap over {args.iterations // args.block_size} rounds of interleaved blocks "
                f"({args.bootstrap} resamples), ratio CIs paired by round; faster/slower only when the CIs "
                "are disjoint and the ratio CI excludes 1"
            )
            print(f"\nStatistics: {method}", flush=True)
            if args.json_out:
                with open(args.json_out, "w") as f:
                    json.dump(
                        {"machine": machine, "args": asdict(args), "method": method, **out}, f, indent=1
                    )
        dist.barrier()
    finally:
        # free the DDP units (reference cycles) while the process group exists (docs/unused-parameters.md)
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
