"""The tests' own PPO in one process, to hold a PPO script's 2-rank run against (equivalence_worker.py records
the run). It shares no code with the scripts' loops. From each rank's recorded rollouts (observations, the
actions the env was given, rewards, episode ends) and the initial weights, update after update: the log-probs
and values of the rollout (the agent's forward one step at a time, its memory carried from the last rollout),
GAE, then PPO's epochs with plain SGD, each step on a global minibatch, that is every rank's s-th minibatch
together (their samples identified by their observations), its advantages normalized over it, the epochs
stopped by the target KL on the mean over both ranks. It also keeps the KL each rank's half alone would see,
so a test can put the target between them.
"""

import importlib

import torch

LR = 0.05  # SGD: the scale of the gradient shows in the weights
ENT_COEF = 0.01
PER_SAMPLE = ("logprobs", "values", "advantages", "returns")


def load(out, world_size: int = 2) -> list[dict]:
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def rollouts(record: dict, updates: int) -> list[dict]:
    """A rank's rollouts, one per update, as the scripts store them: obs [T, N, ...], dones[t] = obs[t] began
    an episode; and where each rollout stopped (next_obs, next_done); the forwards of its update."""
    T = len(record["actions"]) // updates
    obs = torch.stack(record["obs"])  # the reset's observation, then each step's
    ended = torch.stack(record["dones"]).float()
    began = torch.cat([torch.zeros(1, ended.shape[1]), ended])  # began[t]: obs[t] began an episode
    actions, rewards = torch.stack(record["actions"]), torch.stack(record["rewards"]).float()
    out = []
    for u in range(updates):
        steps = slice(u * T, (u + 1) * T)
        r = {"obs": obs[steps], "dones": began[steps], "actions": actions[steps], "rewards": rewards[steps]}
        r |= {"next_obs": obs[(u + 1) * T], "next_done": began[(u + 1) * T]}
        r["forwards"] = [seen for t, seen in record["forwards"] if t == (u + 1) * T]
        out.append(r)
    return out


def replay(agent, obs, dones, actions, memory):
    """The agent's log-probs, entropies and values over T steps of some envs ([T, n, ...]), one step at a time
    from their memory (None: memoryless), as a rollout steps; and the memory after the last step."""
    logprobs, entropies, values = [], [], []
    for t in range(len(obs)):
        _, logprob, entropy, value, memory = agent(obs[t], memory, dones[t], actions[t])
        logprobs.append(logprob)
        entropies.append(entropy)
        values.append(value)
    return torch.stack(logprobs), torch.stack(entropies), torch.stack(values), memory


def gae(rewards, values, dones, next_value, next_done, gamma, lam):
    T, advantages, last = len(rewards), torch.zeros_like(rewards), 0.0
    for t in reversed(range(T)):
        not_done = 1.0 - (next_done if t == T - 1 else dones[t + 1])
        next_v = next_value if t == T - 1 else values[t + 1]
        delta = rewards[t] + gamma * next_v * not_done - values[t]
        last = delta + gamma * lam * not_done * last
        advantages[t] = last
    return advantages


def merged_with_prior(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, mean, var) of every sample so far ([n, ...], float64) together with the statistics' prior (a
    weight of 1e-4 at mean 0 and variance 1), written out directly: what the running statistics must hold."""
    n, prior = len(samples), 1e-4
    if n == 0:
        shape = samples.shape[1:]
        return (
            torch.full(shape, prior, dtype=torch.float64),
            torch.zeros(shape, dtype=torch.float64),
            torch.ones(shape, dtype=torch.float64),
        )
    mean, var = samples.mean(0), samples.var(0, unbiased=False)
    count = prior + n
    m2 = prior * 1.0 + var * n + mean**2 * prior * n / count
    return torch.full_like(mean, count), mean * n / count, m2 / count


def minibatch_samples(r: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(steps, envs) of each training forward of a rank's update, found by matching observations."""
    T, N = r["obs"].shape[:2]
    where = {r["obs"][t, i].numpy().tobytes(): (t, i) for t in range(T) for i in range(N)}
    assert len(where) == T * N, "the scripted observations are not all distinct"
    found = []
    for seen in r["forwards"]:
        rows = seen.reshape(len(seen), *r["obs"].shape[2:])
        pairs = torch.tensor([where[row.numpy().tobytes()] for row in rows])
        found.append((pairs[:, 0], pairs[:, 1]))
    return found


def ppo_step(agent, optimizer, args, parts: list[tuple]) -> tuple[list[float], list[float]]:
    """One SGD step of PPO's loss on a global minibatch (each rank's part: log-prob, entropy, value and the
    rollout's tensors); returns the statistics on the whole and each part's mean KL."""
    logprob, entropy, value = (torch.cat([p[j] for p in parts]) for j in range(3))
    mb = {k: torch.cat([p[3][k] for p in parts]) for k in PER_SAMPLE}
    clip, vclip = args.clip_coef, getattr(args, "vf_clip_coef", args.clip_coef)
    adv = mb["advantages"]
    if args.norm_adv:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    logratio = logprob - mb["logprobs"]
    ratio = logratio.exp()
    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
    v_loss = (value - mb["returns"]) ** 2
    if args.clip_vloss:
        v_clipped = mb["values"] + (value - mb["values"]).clamp(-vclip, vclip)
        v_loss = torch.max(v_loss, (v_clipped - mb["returns"]) ** 2)
    v_loss = 0.5 * v_loss.mean()
    loss = pg_loss - ENT_COEF * entropy.mean() + args.vf_coef * v_loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        kl = (ratio - 1) - logratio
        clipfrac = ((ratio - 1).abs() > clip).float().mean()
        stats = [x.item() for x in (pg_loss, v_loss, entropy.mean(), kl.mean(), clipfrac)]
        sizes = [len(p[0]) for p in parts]
        return stats, [part.mean().item() for part in kl.split(sizes)]


def reference_run(script: str, records: list[dict], args, updates: int, target_kl) -> dict:
    """PPO over both ranks' rollouts in one process: the weights at the end; per update the optimizer steps
    PPO takes, the steps the run took, the mean statistics, and per epoch the mean KL of each rank's half."""
    mod = importlib.import_module(script.removesuffix(".py"))
    ranks = [rollouts(record, updates) for record in records]
    obs_shape = tuple(ranks[0][0]["obs"].shape[2:])
    agent = mod.Agent(obs_shape, int(records[0]["n_actions"]), args)
    agent.load_state_dict(records[0]["initial"])
    optimizer = torch.optim.SGD(agent.parameters(), lr=LR)
    memory = [agent.initial_memory(r[0]["obs"].shape[1], "cpu") for r in ranks]
    normalize = getattr(args, "normalize", False)  # ppo_ddp_continuous.py: observations and rewards
    seen_obs, seen_returns = [], []  # every rank's samples of the rollouts before this one
    discounted = [torch.zeros(r[0]["obs"].shape[1], dtype=torch.float64) for r in ranks]
    log = []
    for u in range(updates):
        now = [r[u] for r in ranks]
        first_memory = list(memory)  # each rank's memory as its rollout began: the update replays from it
        if normalize:  # the statistics of every earlier rollout of both ranks, as the run must hold them
            obs_dim = now[0]["obs"].shape[2:]
            history = torch.cat(seen_obs) if seen_obs else torch.zeros((0, *obs_dim), dtype=torch.float64)
            count, mean, var = merged_with_prior(history)
            agent.obs_rms.count.copy_(count), agent.obs_rms.mean.copy_(mean), agent.obs_rms.var.copy_(var)
            returns_so_far = torch.cat(seen_returns) if seen_returns else torch.zeros(0, dtype=torch.float64)
            scale = 1 / (merged_with_prior(returns_so_far)[2] + 1e-8).sqrt()
            for k, r in enumerate(now):  # each env's discounted return, and the rewards scaled and clipped
                r["discounted"] = torch.zeros_like(r["rewards"], dtype=torch.float64)
                for t in range(len(r["rewards"])):
                    discounted[k] = discounted[k] * args.gamma + r["rewards"][t].double()
                    r["discounted"][t] = discounted[k]
                    ended = r["dones"][t + 1] if t + 1 < len(r["rewards"]) else r["next_done"]
                    discounted[k] = discounted[k] * (1 - ended.double())
                r["rewards"] = (r["rewards"] * scale).clamp(-args.reward_clip, args.reward_clip).float()
            seen_obs += [r["obs"].flatten(0, 1).double() for r in now]
            seen_returns += [r["discounted"].flatten() for r in now]
        with torch.no_grad():  # the rollout's log-probs and values (the weights as they are now), then GAE
            for k, r in enumerate(now):
                r["logprobs"], _, r["values"], memory[k] = replay(
                    agent, r["obs"], r["dones"], r["actions"], memory[k]
                )
                next_value = agent(r["next_obs"], memory[k], r["next_done"])[3]
                rollout = (r["rewards"], r["values"], r["dones"], next_value, r["next_done"])
                r["advantages"] = gae(*rollout, args.gamma, args.gae_lambda)
                r["returns"] = r["advantages"] + r["values"]
        samples = [minibatch_samples(r) for r in now]
        assert len({len(s) for s in samples}) == 1, "the ranks took different numbers of optimizer steps"
        wanted = args.update_epochs * args.num_minibatches  # the steps PPO takes, unless the KL stops it
        rows, half_kls, kls = [], [], []
        for s in range(min(wanted, len(samples[0]))):
            parts = []
            for r, m, (t, i) in zip(now, first_memory, (sample[s] for sample in samples), strict=True):
                envs = None
                if m is not None:  # whole envs, every step of each (time-major), replayed from their memory
                    T, envs = r["obs"].shape[0], i[: len(i) // r["obs"].shape[0]]
                    t, i = torch.arange(T)[:, None].expand(T, len(envs)), envs.expand(T, len(envs))
                else:  # samples drawn alone: one step each
                    t, i = t[None], i[None]
                steps = (r["obs"][t, i], r["dones"][t, i], r["actions"][t, i])
                logprob, entropy, value, _ = replay(agent, *steps, None if envs is None else m[envs])
                old = {k: r[k][t, i].flatten() for k in PER_SAMPLE}
                parts.append((logprob.flatten(), entropy.flatten(), value.flatten(), old))
            stats, part_kls = ppo_step(agent, optimizer, args, parts)
            rows.append(stats)
            kls.append(part_kls)
            if (s + 1) % args.num_minibatches == 0:  # an epoch ended: each rank's mean KL, then the decision
                half_kls.append(torch.tensor(kls).mean(0).tolist())
                kls = []
                if target_kl is not None and sum(half_kls[-1]) / 2 > target_kl:
                    wanted = s + 1
                    break
        if normalize and u == updates - 1:  # the statistics the run ends with: every rollout's
            count, mean, var = merged_with_prior(torch.cat(seen_obs))
            agent.obs_rms.count.copy_(count), agent.obs_rms.mean.copy_(mean), agent.obs_rms.var.copy_(var)
        keys = ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac")
        means = torch.tensor(rows).mean(0).tolist()
        stats = {f"losses/{k}": v for k, v in zip(keys, means, strict=True)}
        log.append({"stats": stats, "steps": wanted, "recorded_steps": len(samples[0]), "half_kls": half_kls})
    return {"model": agent.state_dict(), "updates": log}
