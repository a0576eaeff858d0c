"""Faults injected from outside the scripts, in every process of a test run launched with PPO_DDP_FAULT (the
tests' helpers put this directory on PYTHONPATH then): the scripts hold no test seams.

  PPO_DDP_FAULT=R:U          rank R raises at update U, as its statistics are gathered (the one all_gather
                             of an update's statistics), while the other ranks wait in that collective
  PPO_DDP_FAULT=signal:R:U   rank R gets SIGUSR1 once the statistics of its (U - 1)-th update in this
                             process are gathered (U >= 2): every rank stops at the end of its U-th, as
                             at a scheduler's signal, at a moment a test can name
  PPO_DDP_FAULT=diverge:R    rank R nudges a weight after its first optimizer step: the ranks' weights differ
  PPO_DDP_FAULT=eval-crash   a separate evaluation process (--eval-json) fails at once with exit code 1
  PPO_DDP_FAULT=eval-hang    a separate evaluation process hangs
"""

import os
import signal
import sys
import time

FAULT = os.environ.get("PPO_DDP_FAULT", "")
EVALUATION = any(a.startswith("--eval-json") for a in sys.argv)
RANK = os.environ.get("RANK")
KIND, _, WHERE = FAULT.partition(":") if not FAULT[:1].isdigit() else ("raise", ":", FAULT)
TARGET_RANK = WHERE.split(":")[0]


def at_update(update: int, act, after: bool = False) -> None:
    """Call act() in this process as the statistics of its update-th update are about to be gathered (its
    update-th all_gather of floating-point tensors; the others gather ids and sizes), or once they are."""
    import torch.distributed as dist

    all_gather, calls = dist.all_gather, [0]

    def wrapped(tensor_list, *args, **kwargs):
        calls[0] += tensor_list[0].is_floating_point()
        now = calls[0] == update and tensor_list[0].is_floating_point()
        if now and not after:
            act()
        result = all_gather(tensor_list, *args, **kwargs)
        if now and after:
            act()
        return result

    dist.all_gather = wrapped


def fail() -> None:
    raise RuntimeError(f"injected fault on rank {RANK} at update {WHERE.split(':')[1]}")


if KIND == "eval-crash" and EVALUATION:
    print("RuntimeError: injected fault in the evaluation process", file=sys.stderr, flush=True)
    os._exit(1)
elif KIND == "eval-hang" and EVALUATION:
    time.sleep(3600)
elif KIND == "raise" and not EVALUATION and TARGET_RANK == RANK:
    at_update(int(WHERE.split(":")[1]), fail)
elif KIND == "signal" and not EVALUATION and TARGET_RANK == RANK:  # read at the next update's gather
    at_update(int(WHERE.split(":")[1]) - 1, lambda: os.kill(os.getpid(), signal.SIGUSR1), after=True)
elif KIND == "diverge" and not EVALUATION and TARGET_RANK == RANK:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    steps = [0]

    def nudge(optimizer, *_):
        steps[0] += 1
        if steps[0] == 1:
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].view(-1)[0] += 1e-3

    register_optimizer_step_post_hook(nudge)
