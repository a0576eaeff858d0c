"""One PPO update of ppo_ddp_snake.ppo_update on a fixed global batch, saved for comparison.

Under torchrun with 2 processes each rank trains through DDP on its half of the batch; as plain python
(world size 1) it trains on the whole batch with shards=2. tests/test_snake_distributed.py compares them.
"""

import gc
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ppo_ddp_snake as snake  # noqa: E402

out, target_kl = sys.argv[1], float(sys.argv[2])
rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
if world_size > 1:
    dist.init_process_group("gloo")
else:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
args = snake.Args(hidden_size=32, num_minibatches=4, update_epochs=4, target_kl=target_kl, learning_rate=3e-3)
env = snake.SnakeEnv(8, seed=3)

# The global batch: 2 ranks x 64 samples, rollout statistics from the initial policy.
torch.manual_seed(0)
agent = snake.Agent(env.obs_shape, env.n_actions, args)
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
stats = snake.ppo_update(model, optimizer, batch, args, torch.Generator().manual_seed(7), shards=3 - world_size)
if rank == 0:
    torch.save({"model": agent.state_dict(), "stats": stats, "steps": optimizer.state[agent.actor.bias]["step"]}, out)
del model
gc.collect()  # free DDP's reducer before the group goes (see README)
dist.destroy_process_group()
