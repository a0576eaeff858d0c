"""The DDP-equivalence problem, and a plain single-process PPO update to hold the scripts' ppo_update against.

The reference shares no code with the scripts' update: it draws the same minibatch permutation (a CPU
generator seeded alike, as every rank does), joins each rank's k-th minibatch into global minibatch k,
normalizes advantages over it, and steps SGD on PPO's loss; the target-KL stop looks at the mean KL of both
halves together. It also records the KL each half alone would see, so a test can choose a target where a
rank deciding on its own half would stop at another epoch than the ranks deciding together.
"""

import importlib

import torch

HALF = 64  # samples per rank; the global batch is 2 * HALF
LR = 0.05  # SGD: the scale of the gradient shows in the weights (Adam would hide a sum in place of a mean)
SEED_PERM = 7
CLIP, ENT_COEF, VF_COEF = 0.2, 0.01, 0.5  # the scripts' defaults at progress 0 (clip, entropy, value)


def make_problem(script: str, target_kl: float | None):
    """(module, Args, agent, global batch): the same on every call. Half 1's observations are blank, so the policy
    moves less on its states (only the biases reach them) and the two halves see different KLs."""
    mod = importlib.import_module(script)
    args = mod.Args(hidden_size=32, num_minibatches=4, update_epochs=4, target_kl=target_kl, max_grad_norm=1e6)
    env = mod.Env(8, "cpu", 3, 0, args)
    torch.manual_seed(0)
    agent = mod.Agent(env.obs_shape, env.n_actions, args)
    g = torch.Generator().manual_seed(1)
    high = int(env.reset().max()) + 1  # each obs entry in [0, high): 256 for Snake's planes, 2 for the Arena's
    obs = torch.randint(0, high, (2 * HALF, *env.obs_shape), generator=g, dtype=torch.uint8)
    obs[HALF:] = 0
    with torch.no_grad():
        actions, logprobs, _, values = agent(obs)
    advantages = torch.randn(2 * HALF, generator=g) * 2 + 0.5
    batch = {
        "obs": obs,
        "actions": actions,
        "teacher_actions": actions,
        "logprobs": logprobs,
        "values": values,
        "advantages": advantages,
        "returns": advantages + values,
    }
    return mod, args, agent, batch


def reference_update(script: str, target_kl: float | None) -> dict:
    """PPO's epochs on the whole batch in one process, written out plainly. Returns the weights, the loss
    statistics averaged over minibatches, the optimizer steps, and per epoch the mean KL of each half."""
    _, args, agent, b = make_problem(script, target_kl)
    optimizer = torch.optim.SGD(agent.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(SEED_PERM)
    size = HALF // args.num_minibatches
    rows, half_kls = [], []
    for _epoch in range(args.update_epochs):
        perm = torch.randperm(HALF, generator=gen)
        kls = []
        for i in range(0, HALF, size):
            mb = torch.cat([perm[i : i + size], perm[i : i + size] + HALF])  # rank 0's k-th minibatch, rank 1's
            adv = b["advantages"][mb]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            _, logprob, entropy, value = agent(b["obs"][mb], b["actions"][mb])
            logratio = logprob - b["logprobs"][mb]
            ratio = logratio.exp()
            pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - CLIP, 1 + CLIP)).mean()
            old, ret = b["values"][mb], b["returns"][mb]
            clipped = old + (value - old).clamp(-CLIP, CLIP)
            v_loss = 0.5 * torch.max((value - ret) ** 2, (clipped - ret) ** 2).mean()
            loss = pg_loss - ENT_COEF * entropy.mean() + VF_COEF * v_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                kl = (ratio - 1) - logratio
                clipfrac = ((ratio - 1).abs() > CLIP).float().mean()
                rows.append([x.item() for x in (pg_loss, v_loss, entropy.mean(), kl.mean(), clipfrac)])
                kls.append([kl[:size].mean().item(), kl[size:].mean().item()])
        half_kls.append(torch.tensor(kls).mean(0).tolist())
        if target_kl is not None and sum(half_kls[-1]) / 2 > target_kl:  # both halves together
            break
    keys = ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac")
    means = torch.tensor(rows).mean(0).tolist()
    return {
        "model": agent.state_dict(),
        "stats": {f"losses/{k}": v for k, v in zip(keys, means, strict=True)},
        "steps": len(rows),
        "half_kls": half_kls,
    }
