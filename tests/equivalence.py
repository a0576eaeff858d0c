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
CLIP, ENT_COEF, VF_COEF = 0.2, 0.01, 0.5  # clip and value: every script's default at progress 0; entropy: passed


def make_problem(script: str, target_kl: float | None):
    """(module, Args, agent, global batch): the same on every call. Half 1's observations are blank, so the policy
    moves less on its states (only the biases reach them) and the two halves see different KLs."""
    mod = importlib.import_module(script)
    args = mod.Args(
        hidden_size=32, num_minibatches=4, update_epochs=4, target_kl=target_kl, max_grad_norm=1e6, ent_coef=ENT_COEF
    )
    env = mod.Env(8, "cpu", 3, 0, args)
    torch.manual_seed(0)
    agent = mod.Agent(env.obs_shape, env.n_actions, args)
    g = torch.Generator().manual_seed(1)
    first = env.reset()
    if first.dtype.is_floating_point:  # CartPole's vector: entries of a few units
        obs = torch.randn((2 * HALF, *env.obs_shape), generator=g)
    else:  # each obs entry in [0, high): 256 for Snake's planes, 2 for the Arena's
        high = int(first.max()) + 1
        obs = torch.randint(0, high, (2 * HALF, *env.obs_shape), generator=g, dtype=torch.uint8)
    obs[HALF:] = 0
    with torch.no_grad():
        actions, logprobs, _, values, _ = agent(obs)
    advantages = torch.randn(2 * HALF, generator=g) * 2 + 0.5
    batch = {
        "obs": obs,
        "actions": actions,
        "teacher_actions": actions,
        "logprobs": logprobs,
        "values": values,
        "advantages": advantages,
        "returns": advantages + values,
        "dones": torch.zeros(2 * HALF),
    }
    return mod, args, agent, batch


def plain_ppo_loss(logprob, entropy, value, mb: dict):
    """PPO's loss at the scripts' defaults on a global minibatch, advantages normalized over it: (loss, the
    statistics [policy, value, entropy, kl, clipfrac], the KL per sample)."""
    adv = (mb["advantages"] - mb["advantages"].mean()) / (mb["advantages"].std() + 1e-8)
    logratio = logprob - mb["logprobs"]
    ratio = logratio.exp()
    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - CLIP, 1 + CLIP)).mean()
    old, ret = mb["values"], mb["returns"]
    clipped = old + (value - old).clamp(-CLIP, CLIP)
    v_loss = 0.5 * torch.max((value - ret) ** 2, (clipped - ret) ** 2).mean()
    loss = pg_loss - ENT_COEF * entropy.mean() + VF_COEF * v_loss
    with torch.no_grad():
        kl = (ratio - 1) - logratio
        clipfrac = ((ratio - 1).abs() > CLIP).float().mean()
        return loss, [x.item() for x in (pg_loss, v_loss, entropy.mean(), kl.mean(), clipfrac)], kl


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
            _, logprob, entropy, value, _ = agent(b["obs"][mb], action=b["actions"][mb])
            loss, row, kl = plain_ppo_loss(logprob, entropy, value, {k: v[mb] for k, v in b.items()})
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rows.append(row)
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


# The recurrent problem: ppo_ddp.py --agent lstm, T steps of N rooms per rank, episodes beginning at random
# steps of each room (so a replay must reset some rooms' memory mid-sequence, and not others).
T_REC, N_REC = 6, 4


def lstm_reference(agent, obs, state0, dones):
    """The LSTM agent's logits and values written out, one step at a time: obs [T, B, ...], state0 [B, 2, h],
    dones [T, B]. Gates by hand from the agent's LSTM weights; a room's memory is zeroed where its episode
    begins. Shares no code with the agent's recurrence (only its trunk and heads, plain Linear layers)."""
    x = obs.float()
    hidden = agent.trunk(torch.cat([x[..., :-1], x[..., -1:].clamp(max=10) / 10], -1))
    w_ih, w_hh, b_ih, b_hh = (getattr(agent.lstm, f"{k}_l0") for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    h, c, out = state0[:, 0], state0[:, 1], []
    for t in range(len(obs)):
        keep = 1.0 - dones[t][:, None]
        h, c = h * keep, c * keep
        i, f, g, o = (hidden[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    out = torch.stack(out)
    return agent.actor(out), agent.critic(out).squeeze(-1)


def make_recurrent_problem():
    """(module, Args, agent, batch [T, 2N, ...], state0 [2N, 2, h]) for 2 ranks of N rooms: the same on every
    call. The rollout's log-probs and values come from the reference itself."""
    mod = importlib.import_module("ppo_ddp")
    args = mod.Args(
        agent="lstm", hidden_size=16, num_steps=T_REC, num_minibatches=2, update_epochs=2, ent_coef=ENT_COEF
    )
    args.max_grad_norm = 1e6
    env = mod.Env(1, "cpu", 3, 0, args)
    torch.manual_seed(0)
    agent = mod.Agent(env.obs_shape, env.n_actions, args)
    g = torch.Generator().manual_seed(1)
    n = 2 * N_REC
    obs = torch.randint(0, 2, (T_REC, n, *env.obs_shape), generator=g, dtype=torch.uint8)
    dones = (torch.rand(T_REC, n, generator=g) < 0.25).float()
    state0 = torch.randn(n, 2, args.hidden_size, generator=g) * 0.5  # rooms in the middle of an episode
    with torch.no_grad():
        logits, values = lstm_reference(agent, obs, state0, dones)
        dist = torch.distributions.Categorical(logits=logits)
        actions = dist.sample()
        logprobs = dist.log_prob(actions)
    advantages = torch.randn(T_REC, n, generator=g) * 2 + 0.5
    batch = {"obs": obs, "dones": dones, "actions": actions, "logprobs": logprobs, "values": values}
    batch.update(advantages=advantages, returns=advantages + values)
    return mod, args, agent, batch, state0


def reference_recurrent_update() -> dict:
    """PPO's epochs in one process over both ranks' rooms: a permutation of N rooms per epoch (the draw every
    rank makes), global minibatch k = rank 0's k-th group of rooms and rank 1's, each replayed whole from its
    memory at the rollout's start with lstm_reference."""
    _, args, agent, b, state0 = make_recurrent_problem()
    optimizer = torch.optim.SGD(agent.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(SEED_PERM)
    size = N_REC // args.num_minibatches
    for _epoch in range(args.update_epochs):
        perm = torch.randperm(N_REC, generator=gen)
        for i in range(0, N_REC, size):
            rooms = torch.cat([perm[i : i + size], perm[i : i + size] + N_REC])
            logits, value = lstm_reference(agent, b["obs"][:, rooms], state0[rooms], b["dones"][:, rooms])
            dist = torch.distributions.Categorical(logits=logits)
            mb = {k: v[:, rooms] for k, v in b.items()}
            loss, _, _ = plain_ppo_loss(dist.log_prob(mb["actions"]), dist.entropy(), value, mb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return agent.state_dict()


def rank_part(batch: dict, state0: torch.Tensor, rank: int) -> tuple[dict, torch.Tensor]:
    """Rank `rank`'s rooms of the recurrent problem, flat and time-major, as the scripts keep a rollout."""
    rooms = slice(rank * N_REC, (rank + 1) * N_REC)
    return {k: v[:, rooms].flatten(0, 1) for k, v in batch.items()}, state0[rooms]
