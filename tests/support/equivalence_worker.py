"""Run a PPO script's own main() on a scripted environment, recording what tests/support/equivalence.py needs
to hold the run against a plain one-process PPO of its own:

    torchrun --nproc-per-node=2 tests/support/equivalence_worker.py SCRIPT OUT [FLAGS...]
    python tests/support/equivalence_worker.py SCRIPT OUT [FLAGS...]          (one process)

Patched from outside, in this process only (the script holds no test seams): the script's Env becomes a
ScriptedEnv with the real env's observation shape, dtype and actions, whose observations and rewards are a
function of (global env id, step) alone and which records every action it is given; Adam becomes plain SGD (an
averaged gradient shows in the weights, where Adam would hide a sum in place of a mean); the Agent records its
initial weights and the observations of every training forward (those with a gradient, after the first env
step: the minibatches the update drew), with whether autocast was on. OUT/rank<r>.pt holds the records.
"""

import importlib
import os
import sys
from pathlib import Path

import torch

SUPPORT = Path(__file__).resolve().parent
sys.path[:0] = [str(SUPPORT), str(SUPPORT.parents[1])]  # this folder and the scripts

script, out, *flags = sys.argv[1:]
mod = importlib.import_module(script.removesuffix(".py"))
RECORD = {"forwards": [], "autocast": {"rollout": set(), "update": set()}}
RealEnv, RealAgent = mod.Env, mod.Agent


class ScriptedEnv:
    """The real env's spaces; obs, rewards and episode ends drawn from (seed, global env id, step) alone. Rank
    1's envs (ids from num_envs on) give observations with a tenth as much in them and a tenth of the rewards,
    so the policy moves less on them and the two ranks' KLs differ."""

    steps_on = RealEnv.steps_on

    def __init__(self, num_envs: int, device="cpu", seed: int = 1, env_id_offset: int = 0, cfg=None):
        real = RealEnv(1, "cpu", seed, 0, cfg)
        first = real.reset()
        self.obs_shape, self.n_actions, self.max_episode_steps = real.obs_shape, real.n_actions, 64
        self.dtype, self.high = first.dtype, int(first.max()) + 1 if not first.dtype.is_floating_point else 0
        self.num_envs, self.device = num_envs, torch.device(device)
        self.env_ids = list(range(env_id_offset, env_id_offset + num_envs))
        self.seed, self.t = seed, 0
        RECORD.update(
            env_ids=self.env_ids, n_actions=self.n_actions, obs=[], actions=[], rewards=[], dones=[]
        )
        RECORD["env"] = self

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        obs, rewards, dones = [], [], []
        for i in self.env_ids:
            g = torch.Generator().manual_seed(1_000_003 * self.seed + 10_007 * i + self.t)
            quiet = i >= self.num_envs  # not rank 0's ids: a tenth as much in the observations
            if self.dtype.is_floating_point:
                obs.append(torch.randn(self.obs_shape, generator=g) * (0.1 if quiet else 1.0))
            else:
                values = torch.randint(0, self.high, self.obs_shape, generator=g)
                kept = torch.rand(self.obs_shape, generator=g) < (0.1 if quiet else 1.0)
                obs.append((values * kept).to(self.dtype))
            rewards.append(torch.randn((), generator=g) * (0.1 if quiet else 1.0))
            dones.append(torch.rand((), generator=g) < 0.1)
        return torch.stack(obs), torch.stack(rewards), torch.stack(dones)

    def reset(self) -> torch.Tensor:
        obs, _, _ = self._draw()
        RECORD["obs"].append(obs)
        return obs.to(self.device)

    def step(self, actions: torch.Tensor):
        RECORD["actions"].append(actions.detach().cpu().clone())
        self.t += 1
        obs, reward, done = self._draw()
        RECORD["obs"].append(obs)
        RECORD["rewards"].append(reward)
        RECORD["dones"].append(done)
        info = {key: torch.zeros(self.num_envs) for key in mod.EPISODE_METRICS}
        to = lambda x: x.to(self.device)  # noqa: E731
        return to(obs), to(reward), to(done), {k: to(v) for k, v in info.items()}

    def state_dict(self):
        return None

    def load_state_dict(self, state) -> None:
        raise AssertionError("the scripted env is never resumed")


class RecordingAgent(RealAgent):
    """The script's agent, recording its initial weights and what each training forward saw."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        RECORD["initial"] = {k: v.detach().clone() for k, v in self.state_dict().items()}

    def forward(self, obs, *args, **kwargs):
        env = RECORD.get("env")
        stepped = env is not None and env.t > 0  # the loss's probe at set-up runs before any step
        phase = "update" if torch.is_grad_enabled() else "rollout"
        if stepped:
            RECORD["autocast"][phase].add(torch.is_autocast_enabled(obs.device.type))
        if stepped and phase == "update":  # with the env steps so far: which update this forward is of
            RECORD["forwards"].append((env.t, obs.detach().cpu().clone()))
        return super().forward(obs, *args, **kwargs)


def sgd(params, lr=1e-3, **_):
    return torch.optim.SGD(params, lr=lr)


mod.Env, mod.Agent = ScriptedEnv, RecordingAgent
torch.optim.Adam = sgd
sys.argv = [script, *flags]
code = mod.main()
if "env" in RECORD:
    del RECORD["env"]
    rank = int(os.environ.get("RANK", 0))
    torch.save({**RECORD, "code": code}, Path(out) / f"rank{rank}.pt")
sys.exit(code)
