"""Environments registered by a module of their own, as a user's would be:
`--env-id thirdparty_env:Balance-v0` (tests/ on PYTHONPATH)."""

import time

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


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


gym.register("Balance-v0", entry_point=f"{__name__}:Balance", max_episode_steps=500)
gym.register("Pixels-v0", entry_point=f"{__name__}:Pixels", max_episode_steps=100)
gym.register("Endless-v0", entry_point=f"{__name__}:Endless", max_episode_steps=10**7)
