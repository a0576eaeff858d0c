"""One call of SCRIPT.ppo_update on 2 ranks, each with its half of a fixed global batch, saved for comparison:
    torchrun --nproc-per-node=2 tests/ddp_equivalence_worker.py SCRIPT OUT TARGET_KL    (SCRIPT: ppo_ddp_snake
    or ppo_ddp; TARGET_KL: a float, or "none"; or "recurrent": ppo_ddp --agent lstm on the recurrent problem)

tests/test_equivalence.py (tests/test_recurrent.py for "recurrent") compares the result with a plain
single-process PPO update of its own on the whole batch. The optimizer is SGD and gradients are not clipped, so
the scale of the averaged gradient shows in the weights (Adam and clipping would hide a sum in place of a mean).
"""

import gc
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]  # tests/equivalence.py and the scripts
from equivalence import HALF, LR, SEED_PERM, make_problem, make_recurrent_problem, rank_part  # noqa: E402

script, out, target_kl = sys.argv[1], sys.argv[2], sys.argv[3]
dist.init_process_group("gloo")
rank = dist.get_rank()
state0 = None
if target_kl == "recurrent":
    mod, args, agent, batch, state0 = make_recurrent_problem()
    batch, state0 = rank_part(batch, state0, rank)  # this rank's rooms
else:
    mod, args, agent, batch = make_problem(script, None if target_kl == "none" else float(target_kl))
    batch = {k: v[rank * HALF : (rank + 1) * HALF] for k, v in batch.items()}  # this rank's half

model = DDP(agent)
optimizer = torch.optim.SGD(agent.parameters(), lr=LR)
steps = [0]
optimizer.register_step_post_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
gen = torch.Generator().manual_seed(SEED_PERM)
stats = mod.ppo_update(model, [optimizer], batch, args, mod.schedules_at(args, 0.0), gen, state0)
if rank == 0:
    torch.save({"model": agent.state_dict(), "stats": stats, "steps": steps[0]}, out)
del model
gc.collect()  # free DDP's reducer before the group goes (see README)
dist.destroy_process_group()
