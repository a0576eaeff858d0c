"""ppo_ddp_gym.py on every common Gymnasium space: each observation part encoded where the agent reads it
(images as C x H x W in [0, 1] for a CNN, Discrete and MultiDiscrete one-hot, the rest flattened, text left
out), MultiDiscrete actions as one categorical head per dimension, --bench-env with valid random actions for
every env kind, a Dict of every space with MultiDiscrete actions trained on 2 ranks and resumed, and MiniGrid
from PyPI by MODULE:ID. Refusals are in test_gym.py."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import ROOT, explain, progress, python, torchrun
from torch.distributions import Categorical

import ppo_ddp_gym as gp

SUPPORT = str(ROOT / "tests" / "support")  # thirdparty_env.py: AllSpaces-v0, Pixels-v0
ALL_SPACES = "thirdparty_env:AllSpaces-v0"


@pytest.fixture(autouse=True)
def thirdparty(monkeypatch):
    monkeypatch.syspath_prepend(SUPPORT)


def test_every_part_of_a_dict_observation_is_encoded_in_order():
    """AllSpaces' Dict (keys in Gymnasium's sorted order): the C x H x W board and the H x W x C view as C x H
    x W over 255, Discrete(3, start=1) and MultiDiscrete([2, 3]) one-hot, MultiBinary and the 3 x 4 Box
    flattened, the Text part left out and named; FrozenLake's Discrete(16) one-hot; a plain vector untouched.
    """
    env = gym.make(ALL_SPACES)
    flat = gp.FlatObservation(env)
    obs, _ = env.reset(seed=3)
    vector = flat.observation(obs)
    expected = [
        obs["board"].astype(np.float32).ravel() / 255,
        obs["flags"].astype(np.float32),
        obs["grid"].ravel(),
        np.eye(3)[obs["pose"][0] - 1],
        np.concatenate([np.eye(2)[obs["pose"][1][0]], np.eye(3)[obs["pose"][1][1]]]),
        obs["view"].transpose(2, 0, 1).astype(np.float32).ravel() / 255,
    ]
    np.testing.assert_allclose(vector, np.concatenate(expected), rtol=1e-6)
    assert flat.observation_space.shape == vector.shape == (50 + 4 + 12 + 3 + 5 + 108,)
    assert [part.shape for part in flat.parts if len(part.shape) == 3] == [(2, 5, 5), (3, 6, 6)]
    assert gp.dropped_parts(env.observation_space) == ["note"]
    lake = gp.GymEnv(2, "cpu", 1, 0, gp.Args(env_id="FrozenLake-v1"))
    assert torch.equal(lake.reset(), torch.eye(16)[[0, 0]])  # both start on cell 0
    assert not gp.needs_flattening(gym.make("CartPole-v1").observation_space)


def test_multidiscrete_actions_are_one_head_per_dimension():
    """The agent on AllSpaces: an action is a row of 2 integers in range, its log-prob and entropy are the
    sums of the two heads' (a 3-way and a 2-way categorical over the actor's 5 logits), greedy takes each
    head's argmax, and a CNN reads each image."""
    args = gp.Args(env_id=ALL_SPACES, hidden_size=16)
    env = gp.GymEnv(4, "cpu", 1, 0, args)
    torch.manual_seed(0)
    agent = gp.Agent(env.obs_shape, env.n_actions, args)
    obs = env.reset()
    action, logprob, entropy, _, _ = agent(obs)
    assert env.n_actions == (3, 2) and action.shape == (4, 2)
    assert ((action >= 0) & (action < torch.tensor([3, 2]))).all()
    logits = agent.actor(agent.trunk(obs)).split([3, 2], -1)
    heads = [Categorical(logits=part) for part in logits]
    torch.testing.assert_close(logprob, heads[0].log_prob(action[:, 0]) + heads[1].log_prob(action[:, 1]))
    torch.testing.assert_close(entropy, heads[0].entropy() + heads[1].entropy())
    greedy = agent(obs, greedy=True)[0]
    assert torch.equal(greedy, torch.stack([part.argmax(-1) for part in logits], -1))
    convolutions = [m for m in agent.trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.in_channels for m in convolutions[::2]] == [2, 3]  # the board's 2 channels, the view's 3


@pytest.mark.parametrize(
    "env_id", ["CartPole-v1", "FrozenLake-v1", ALL_SPACES, "thirdparty_env:Pixels-v0", "ALE/Pong-v5"]
)
def test_bench_env_steps_every_kind_with_valid_random_actions(env_id):
    """The `random` baseline --bench-env plays gives actions inside the action space, and bench_env steps the
    env from a reset (Gymnasium raises ResetNeeded otherwise)."""
    env = gp.GymEnv(2, "cpu", 1, 0, gp.Args(env_id=env_id))
    policy = gp.BASELINES["random"](torch.Generator().manual_seed(0))
    space = env.vec.single_action_space
    for _ in range(20):
        actions = policy(env, None).numpy().reshape(2, *space.shape) + space.start
        assert all(space.contains(a.astype(space.dtype)) for a in actions), actions
    assert gp.bench_env(env, steps=5) > 0


def test_every_space_trains_on_two_ranks_and_resumes(tmp_path):
    """AllSpaces (an image each way, Discrete, MultiDiscrete, MultiBinary, a 2-D Box, Text, MultiDiscrete
    actions) by MODULE:ID on 2 ranks: stopped by a signal at update 2, resumed, finished at update 3 with the
    weights identical on both ranks, the text part named once; the final model plays greedily."""
    flags = ["--env-id", ALL_SPACES, "--num-envs=2", "--num-steps=16", "--num-minibatches=2"]
    flags += ["--total-timesteps=192", "--hidden-size=16", "--eval-interval=0", "--print-interval=1000"]
    flags += ["--run-name=s", "--dist-timeout=60"]
    p = torchrun("ppo_ddp_gym.py", *flags, cwd=tmp_path, PPO_DDP_FAULT="signal:1:2", PYTHONPATH=SUPPORT)
    assert "stopped by SIGUSR1 (1 of 2 ranks) at update 2" in p.stdout, explain(p)
    assert p.stdout.count("observation parts left out (text: no encoding here): note") == 1, explain(p)
    p = torchrun("ppo_ddp_gym.py", *flags, "--resume", cwd=tmp_path, PYTHONPATH=SUPPORT)
    assert p.returncode == 0 and "parameters identical on all 2 ranks after 3 updates" in p.stdout, explain(p)
    assert [int(row["update"]) for row in progress(tmp_path / "runs/s")] == [1, 2, 3]
    model = str(tmp_path / "runs/s/final_model.pt")
    p = python("ppo_ddp_gym.py", f"--eval-checkpoint={model}", "--eval-episodes=2", PYTHONPATH=SUPPORT)
    assert p.returncode == 0 and "episode return per episode" in p.stdout, explain(p)


def test_minigrid_from_pypi_trains_by_module_id(tmp_path):
    """minigrid:MiniGrid-DoorKey-5x5-v0 (a Dict of a 7 x 7 x 3 image, a direction and a mission text) trains
    two updates on 2 ranks."""
    flags = ["--env-id=minigrid:MiniGrid-DoorKey-5x5-v0", "--num-envs=2", "--num-steps=16"]
    flags += ["--num-minibatches=2", "--total-timesteps=128", "--eval-interval=0", "--run-name=m"]
    p = torchrun("ppo_ddp_gym.py", *flags, "--print-interval=1000", "--dist-timeout=60", cwd=tmp_path)
    assert p.returncode == 0 and "parameters identical on all 2 ranks after 2 updates" in p.stdout, explain(p)
    assert "left out (text: no encoding here): mission" in p.stdout
