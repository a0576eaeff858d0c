"""One update of SCRIPT.ppo_update on a fixed global batch, saved for comparison:
    python tests/ddp_equivalence_worker.py SCRIPT OUT TARGET_KL    (SCRIPT: ppo_ddp_snake or ppo_ddp)

Under torchrun with 2 processes each rank trains through DDP on its half of the batch; as plain python
(world size 1) it trains on the whole batch with shards=2. tests/test_distributed.py compares them.
"""

import gc
import importlib
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
script, out, target_kl = sys.argv[1], sys.argv[2], float(sys.argv[3])
mod = importlib.import_module(script)
rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
if world_size > 1:
    dist.init_process_group("gloo")
else:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
args = mod.Args(hidden_size=32, num_minibatches=4, update_epochs=4, target_kl=target_kl, learning_rate=3e-3)
env = mod.make_env(args, 8, "cpu", seed=3)

# The global batch: 2 ranks x 64 samples, rollout statistics from the initial policy.
torch.manual_seed(0)
agent = mod.Agent(env.obs_shape, env.n_actions, args)
g = torch.Generator().manual_seed(1)
obs = torch.randint(0, 256, (128, *env.obs_shape), generator=g, dtype=torch.uint8)
with torch.no_grad():
    actions, logprobs, _, values = agent(obs)
advantages = torch.randn(128, generator=g) * 2 + 0.5
batch = {
    "obs": obs,
    "actions": actions,
    "logprobs": logprobs,
    "values": values,
    "advantages": advantages,
    "returns": advantages + values,
}
if world_size > 1:  # this rank's half
    batch = {k: v[rank * 64 : (rank + 1) * 64] for k, v in batch.items()}

model = DDP(agent)
optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
gen, shards = torch.Generator().manual_seed(7), 3 - world_size
if script == "ppo_ddp":  # several optimizers, scheduled coefficients
    stats = mod.ppo_update(model, [optimizer], batch, args, mod.schedules_at(args, 0.0), gen, shards)
else:
    stats = mod.ppo_update(model, optimizer, batch, args, gen, shards)
if rank == 0:
    torch.save({"model": agent.state_dict(), "stats": stats, "steps": optimizer.state[agent.actor.bias]["step"]}, out)
del model
gc.collect()  # free DDP's reducer before the group goes (see README)
dist.destroy_process_group()
