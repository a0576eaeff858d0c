"""Environments registered by a module of their own, as a user's would be:
`--env-id thirdparty_env:Balance-v0` (tests/ on PYTHONPATH)."""

import copy
import time

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.envs.classic_control.pendulum import PendulumEnv


class Balance(CartPoleEnv):
    """CartPole from another module: not in ppo_ddp_gym.RESTORABLE, so checkpoints do not hold its state."""


class Pixels(gym.Env):
    """Image observations that are not an Atari screen."""

    observation_space = gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


class Endless(gym.Env):
    """Episodes that never end, a millisecond a step: an evaluation in them runs until it is stopped."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        time.sleep(0.001)
        return np.zeros(2, np.float32), 1.0, False, False, {}


class Swing(PendulumEnv):
    """Pendulum from another module: not in ppo_ddp_continuous.RESTORABLE, its state is not checkpointed."""


class Unbounded(gym.Env):
    """Continuous actions without bounds."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}


class AllSpaces(gym.Env):
    """Every observation space ppo_ddp_gym.py encodes, in one Dict (an H x W x C image, a C x H x W one, a
    Tuple of Discrete with a start and MultiDiscrete, MultiBinary, a 2-D Box, a Text it leaves out), and
    MultiDiscrete actions with a start, checked: the reward is 1 for each action entry that matches a pixel of
    the view, so a policy that reads the image learns."""

    SPACE = gym.spaces.Dict(
        {
            "view": gym.spaces.Box(0, 255, (6, 6, 3), np.uint8),
            "board": gym.spaces.Box(0, 255, (2, 5, 5), np.uint8),
            "pose": gym.spaces.Tuple((gym.spaces.Discrete(3, start=1), gym.spaces.MultiDiscrete([2, 3]))),
            "flags": gym.spaces.MultiBinary(4),
            "grid": gym.spaces.Box(-1.0, 1.0, (3, 4), np.float32),
            "note": gym.spaces.Text(8),
        }
    )
    action_space = gym.spaces.MultiDiscrete([3, 2], start=[1, 0])

    def __init__(self):
        self.observation_space = copy.deepcopy(self.SPACE)  # its own random stream, seeded by reset()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.observation_space.seed(seed)
        self.t, self.obs = 0, self.observation_space.sample()
        return self.obs, {}

    def step(self, action):
        if not self.action_space.contains(np.asarray(action, dtype=np.int64)):
            raise ValueError(f"AllSpaces: {action} is not in {self.action_space}")
        target = self.obs["view"][0, 0, :2] % np.array([3, 2]) + np.array([1, 0])
        reward = float((np.asarray(action) == target).sum())
        self.t, self.obs = self.t + 1, self.observation_space.sample()
        return self.obs, reward, self.t >= 8, False, {}


class Molecules(gym.Env):
    """Graph observations, which no PPO script here encodes."""

    observation_space = gym.spaces.Graph(gym.spaces.Box(0.0, 1.0, (2,)), None)
    action_space = gym.spaces.Discrete(2)


class NeedsMissing(gym.Env):
    """An environment whose optional dependency is not installed."""

    def __init__(self):
        raise gym.error.DependencyNotInstalled(
            'missing_engine is not installed, run `pip install "missing_engine"`'
        )


gym.register("Balance-v0", entry_point=f"{__name__}:Balance", max_episode_steps=500)
gym.register("Pixels-v0", entry_point=f"{__name__}:Pixels", max_episode_steps=100)
gym.register("Endless-v0", entry_point=f"{__name__}:Endless", max_episode_steps=10**7)
gym.register("Swing-v0", entry_point=f"{__name__}:Swing", max_episode_steps=200)
gym.register("Unbounded-v0", entry_point=f"{__name__}:Unbounded", max_episode_steps=100)
gym.register("AllSpaces-v0", entry_point=f"{__name__}:AllSpaces", max_episode_steps=100)
gym.register("Molecules-v0", entry_point=f"{__name__}:Molecules")
gym.register("NeedsMissing-v0", entry_point=f"{__name__}:NeedsMissing")
