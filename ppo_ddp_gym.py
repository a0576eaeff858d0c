"""PPO on any Gymnasium environment with discrete actions, Atari included, across N processes with DDP.

  torchrun --standalone --nproc-per-node=2 ppo_ddp_gym.py --env-id CartPole-v1 --num-envs 2   # ppo.py's batch
  torchrun --standalone --nproc-per-node=2 ppo_ddp_gym.py --env-id BreakoutNoFrameskip-v4 --num-envs 8 \\
      --clip-coef 0.1 --total-timesteps 10000000 --eval-mode async          # CleanRL ppo_atari_multigpu.py
  python ppo_ddp_gym.py --eval-checkpoint runs/RUN/final_model.pt --render                   # watch it play

The template (ppo_ddp_snake.py) with its environment part rewritten: each rank steps its own Gymnasium vector
env on the CPU (seeded by global env id), collects a rollout with the plain module, and trains through the DDP
wrapper. Vector observations get CleanRL ppo.py's MLP, Atari CleanRL's preprocessing and Nature CNN; any
other observation space is flattened into a vector, images read by a CNN (docs/gym.md).
"""

import contextlib
import csv
import gc
import importlib
import json
import math
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  first, or destroy_process_group frees nothing (docs/correctness.md)
import torch.nn as nn
import tyro
from torch.distributions.categorical import Categorical
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    exp_name: str = "ppo_ddp_gym"
    """the name of this experiment (the run name starts with it)"""
    seed: int = 1
    """seed of the experiment; rank r seeds its sampling with seed + r, envs by global env id"""
    torch_deterministic: bool = True
    """`torch.backends.cudnn.deterministic`"""
    cuda: bool = True
    """use cuda:LOCAL_RANK when CUDA is present (backend nccl); otherwise CPU (backend gloo)"""
    track: bool = False
    """log to Weights and Biases as well (wandb is imported only then)"""
    wandb_project_name: str = "ppo-ddp"
    """the wandb project"""
    run_name: str = ""
    """runs/<run_name>/; empty = <exp_name>__<seed>__<launch id>, the same after a torchrun restart"""

    # The environment
    env_id: str = "CartPole-v1"
    """any registered Gymnasium id with a Discrete or MultiDiscrete action space: Atari (ALE/...-v5,
    ...NoFrameskip-v4: CleanRL's preprocessing and the Nature CNN), any other observations flattened (images
    to a CNN; docs/gym.md), or module:Id to import your own module first"""
    vector_mode: Literal["sync", "async"] = "sync"
    """sync: a rank steps its envs in its own process; async: one subprocess per env (for many cores per rank)
    """

    # Algorithm (CleanRL ppo.py's values)
    total_timesteps: int = 500_000
    """environment steps of all ranks together (global)"""
    num_envs: int = 0
    """envs per rank; 0 = auto: one per CPU core of a rank's share of the smallest node (a power of two,
    leaving at least 100 updates). CleanRL ppo.py's 4 envs on 2 ranks: --num-envs 2"""
    num_steps: int = 128
    """steps per env per rollout (per-rank batch = num_envs * num_steps)"""
    num_minibatches: int = 4
    """minibatches per epoch; each rank's batch is split the same way, a global minibatch spans all ranks"""
    update_epochs: int = 4
    """passes over the batch per update"""
    learning_rate: float = 2.5e-4
    """initial learning rate of Adam"""
    lr_schedule: Literal["linear", "constant"] = "linear"
    """linear: lr * (1 - p), CleanRL's anneal_lr; constant: lr; p = global_step / total"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """lambda of generalized advantage estimation"""
    norm_adv: bool = True
    """normalize advantages with the mean and std of the global minibatch (all ranks)"""
    clip_coef: float = 0.2
    """PPO's surrogate clipping coefficient (CleanRL's Atari scripts: 0.1)"""
    clip_vloss: bool = True
    """clip the value loss as in PPO's reference implementation"""
    ent_coef: float = 0.01
    """entropy bonus coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    max_grad_norm: float = 0.5
    """global gradient norm clip"""
    target_kl: float | None = None
    """stop the update's epochs early when the mean KL over all ranks exceeds this (None = never)"""
    hidden_size: int = 64
    """width of the MLP's two hidden layers (vector observations; the Nature CNN's are fixed)"""

    # DDP
    find_unused: Literal["auto", "on", "off"] = "auto"
    """DDP(find_unused_parameters): auto = on iff the loss leaves a parameter unused; --[no-]find-unused"""
    static_graph: bool = False
    """DDP(static_graph=True)"""
    pin_cpus: bool = True
    """on CPU, keep each local rank to its own share of the CPUs the launcher allows (off: the OS places)"""
    dist_timeout: float = 600.0
    """seconds any collective may wait before the job fails; a local evaluation stops after half of it"""

    # Run control
    checkpoint_interval: int = 50
    """updates between checkpoints (0 = only the final model)"""
    eval_interval: int = 50
    """updates between greedy evaluations on rank 0 (0 = off); with --eval-mode local the other ranks wait for
    it"""
    eval_episodes: int = 10
    """episodes (whole games) per evaluation, played in parallel, one per env"""
    eval_mode: Literal["local", "async", "none"] = "local"
    """local: rank 0 evaluates in-process; async: in a separate process, training going on; none: never"""
    resume: bool = False
    """continue runs/<run_name>/ from its newest checkpoint (a restart does so itself); same schedules"""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 runs the forward passes under autocast"""
    compile: bool = False
    """torch.compile the rollout policy and the DDP training model"""
    print_interval: float = 10.0
    """seconds between console status tables on rank 0"""

    # Other modes
    bench_env: bool = False
    """step the envs alone with random actions, print `<number> steps/s` and exit"""
    eval_checkpoint: str = ""
    """play a checkpoint or final_model.pt in one process, print the mean return and exit"""
    eval_json: str = ""
    """with --eval-checkpoint: also write the results to this JSON file (used by --eval-mode async)"""
    baseline: Literal["", "random"] = ""
    """play random actions for eval_episodes episodes, print the mean return and exit"""
    render: bool = False
    """with --eval-checkpoint: draw env 0's rgb_array frames in the terminal (24-bit colour), frame by frame
    """
    capture_video: bool = False
    """a GIF of a greedy episode per evaluation, in runs/<run_name>/videos/ (--eval-checkpoint P: beside P)"""
    render_fps: float = 30.0
    """frames per second of --render"""


class ArgError(ValueError):
    """A bad flag or combination: one line on stderr, exit code 2."""


# Yours to edit, from Args down to the marked line below: the environment, the agent, the algorithm, its loop.
# A new script is a copy of this one with this part rewritten (docs/template.md). The operations below the
# line use these names from above it (tests/test_template.py checks the list):
#   Args: the fields of run control, DDP and sizes (seed, num_envs, num_steps, total_timesteps, eval_*, ...)
#   ArgError: a bad setting, one line and exit code 2 on every rank
#   Env(num_envs, device, seed, env_id_offset, cfg): .num_envs, .device, .env_ids (global ids: no two ranks
#     alike), .obs_shape, .n_actions, .max_episode_steps, .steps_on ("device": vectorized in torch; "cpu":
#     one env per core); reset() -> obs; step(actions) -> (obs, reward, done, info), tensors on device,
#     auto-reset, each ended game's metrics in info where info["game_over"] (default: done); state_dict()
#     (None: the envs cannot save their state, a resume restarts their episodes) and load_state_dict()
#   EPISODE_METRICS: {info key: tag}, the first the headline; BASELINES: {name: make(generator) ->
#     policy(env, obs)}, "random" valid random actions (--bench-env plays them); render(env, i) -> str;
#     draw(env, i) -> RGB image
#   Agent(obs_shape, n_actions, args): initial_memory(n, device) (None: no memory) and forward(obs, memory,
#     done, action=None, greedy=False) -> (action, logprob, entropy, value, memory): evaluation plays it
#   check_args(args, world_size): ArgError on a setting of this part; train(args, run): the loop, calling the
#     services of `run` (resume, find_unused, count_episodes, timed, end_update) and the DDP-way helpers
#     (normalize_over_ranks, mean_over_ranks)


# == Environment: a Gymnasium vector env on the CPU, one host-to-device copy of its observations per step ==
ATARI_ENTRY_POINT = "ale_py.env:AtariEnv"
# Envs whose whole state (physics, RNG, time-limit counter) pickles and unpickles exactly: a checkpoint holds
# it and a resume is bit-identical. ALE pickles too, but a restored game plays on differently (tried with
# ale-py 0.12.1), so Atari and every env not listed here restart their episodes on resume. Add your module if
# it can.
RESTORABLE = ("gymnasium.envs.classic_control.",)


PROBED = {}  # env id: env_spaces(env id)
PIP_NAMES = {
    "ale_py": "ale-py",
    "Box2D": '"gymnasium[box2d]"',
    "mujoco": '"gymnasium[mujoco]"',
    "cv2": "opencv-python",
}


def pip_hint(e: ImportError) -> str:
    """What an ImportError lacks and the pip install that usually brings it."""
    name = (e.name or "").split(".")[0]
    return f"{e} (pip install {PIP_NAMES.get(name, name.replace('_', '-'))})" if name else str(e)


def env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of env_id, or ArgError. MODULE:ID imports MODULE first (your own envs register
    there, as with gym.make); ale-py registers the Atari ids when first needed."""
    module, _, name = env_id.rpartition(":")
    try:
        if module:
            importlib.import_module(module)
        if name not in gym.registry:
            with contextlib.suppress(ImportError):  # the Atari ids; ROMs ship in ale-py's wheel
                gym.register_envs(importlib.import_module("ale_py"))
        if (
            name not in gym.registry
            and "ale_py" not in sys.modules
            and ("ALE/" in name or "NoFrameskip" in name)
        ):
            raise ArgError(f"--env-id {env_id}: Atari needs ale-py (pip install ale-py)")
        return gym.spec(name)
    except ImportError as e:
        raise ArgError(f"--env-id {env_id}: {pip_hint(e)}") from None
    except gym.error.Error as e:
        raise ArgError(f"--env-id {env_id}: {str(e).splitlines()[0]}") from None


def env_spaces(env_id: str) -> tuple[gym.envs.registration.EnvSpec, gym.Space, gym.Space, list]:
    """(spec, observation space, action space, render modes) of env_id, or ArgError; a missing package says
    which pip install brings it. Probed once per process (the agent asks again for the observation parts)."""
    if env_id not in PROBED:
        spec = env_spec(env_id)
        atari = spec.entry_point == ATARI_ENTRY_POINT
        try:
            probe = gym.make(env_id, **({"frameskip": 1} if atari else {}))
        except gym.error.DependencyNotInstalled as e:  # Gymnasium's own message names the pip install
            raise ArgError(
                f"--env-id {env_id} needs a package that is missing: {str(e).splitlines()[0]}"
            ) from None
        except ImportError as e:
            raise ArgError(f"--env-id {env_id} needs a package that is missing: {pip_hint(e)}") from None
        PROBED[env_id] = (spec, probe.observation_space, probe.action_space, probe.metadata["render_modes"])
        probe.close()
    return PROBED[env_id]


def env_kind(args: Args) -> tuple[gym.envs.registration.EnvSpec, bool, bool]:
    """(spec, Atari?, renders rgb_array frames?) of --env-id, or ArgError where this file cannot train."""
    spec, obs_space, action_space, modes = env_spaces(args.env_id)
    atari = spec.entry_point == ATARI_ENTRY_POINT
    if atari and spec.kwargs.get("obs_type", "rgb") != "rgb":
        raise ArgError(
            f"--env-id {args.env_id}: Atari RAM or grayscale observations are not supported (use rgb)"
        )
    if isinstance(action_space, gym.spaces.Box):
        raise ArgError(
            f"--env-id {args.env_id}: the action space is {action_space}; ppo_ddp_continuous.py trains those"
        )
    if not isinstance(action_space, gym.spaces.Discrete | gym.spaces.MultiDiscrete):
        raise ArgError(
            f"--env-id {args.env_id}: the action space is {action_space}; this file trains Discrete and "
            "MultiDiscrete"
        )
    if not atari:
        try:
            observation_parts(obs_space)
        except ArgError as e:
            raise ArgError(f"--env-id {args.env_id}: {e}") from None
    frames_too = "rgb_array" in modes
    if (args.capture_video or args.render) and not frames_too:
        raise ArgError(f"--capture-video and --render need rgb_array frames; {args.env_id} renders {modes}")
    return spec, atari, frames_too


# == Observations: any space as one float vector, its parts in order; images go to a CNN in the agent ==
@dataclass(frozen=True)
class ObsPart:
    """One part of an observation: its keys into Dict and Tuple spaces, its space, its encoded shape ((C, H,
    W) for an image, (n,) for the rest), and whether the image comes as H x W x C."""

    keys: tuple
    space: gym.Space
    shape: tuple[int, ...]
    channels_last: bool = False


def is_image(space: gym.Space) -> bool:
    """A uint8 Box of H x W, H x W x C or C x H x W with C of at most 4 channels."""
    if not (isinstance(space, gym.spaces.Box) and space.dtype == np.uint8):
        return False
    return len(space.shape) == 2 or (len(space.shape) == 3 and min(space.shape[0], space.shape[-1]) <= 4)


def observation_parts(space: gym.Space, keys: tuple = ()) -> list[ObsPart]:
    """The parts of an observation space in order, or ArgError naming the first that cannot be encoded. Text
    is dropped (the env's own step() still sees it): there is no one clean way to encode it."""
    where = f"observation part {'.'.join(map(str, keys))}" if keys else "observations"
    if isinstance(space, gym.spaces.Dict):
        return [p for key, sub in space.spaces.items() for p in observation_parts(sub, (*keys, key))]
    if isinstance(space, gym.spaces.Tuple):
        return [p for i, sub in enumerate(space.spaces) for p in observation_parts(sub, (*keys, i))]
    if is_image(space):
        shape = space.shape if len(space.shape) == 3 else (*space.shape, 1)
        if shape[0] <= 4 < shape[-1]:  # C x H x W; H x W x C otherwise (Gymnasium's own images)
            return [ObsPart(keys, space, shape)]
        return [ObsPart(keys, space, (shape[2], shape[0], shape[1]), channels_last=True)]
    if isinstance(space, gym.spaces.Box | gym.spaces.MultiBinary):
        return [ObsPart(keys, space, (math.prod(space.shape),))]
    if isinstance(space, gym.spaces.Discrete):
        return [ObsPart(keys, space, (int(space.n),))]
    if isinstance(space, gym.spaces.MultiDiscrete):
        return [ObsPart(keys, space, (int(space.nvec.sum()),))]
    if keys and is_text(space):
        return []
    raise ArgError(
        f"{where} are {space}; this file encodes Box (images too), Discrete, MultiDiscrete, MultiBinary, and "
        "Dict or Tuple of them"
    )


def is_text(space: gym.Space) -> bool:
    """Text, or a space of strings of its own (MiniGrid's mission)."""
    if isinstance(space, gym.spaces.Text):
        return True
    with contextlib.suppress(Exception):
        return isinstance(space.sample(), str)
    return False


def dropped_parts(space: gym.Space, keys: tuple = ()) -> list[str]:
    """The names of the text parts observation_parts leaves out."""
    if isinstance(space, gym.spaces.Dict | gym.spaces.Tuple):
        items = space.spaces.items() if isinstance(space, gym.spaces.Dict) else enumerate(space.spaces)
        return [name for key, sub in items for name in dropped_parts(sub, (*keys, key))]
    return [".".join(map(str, keys))] if keys and is_text(space) else []


def encode(part: ObsPart, value) -> np.ndarray:
    """One part of one observation as float32 numbers: an image in C x H x W scaled to [0, 1], Discrete and
    MultiDiscrete one-hot, the rest as it is, flattened."""
    space = part.space
    if isinstance(space, gym.spaces.Discrete):
        return np.eye(space.n, dtype=np.float32)[int(value) - int(space.start)]
    if isinstance(space, gym.spaces.MultiDiscrete):
        values = (np.asarray(value) - space.start).ravel()
        offsets = np.concatenate([[0], np.cumsum(space.nvec.ravel())[:-1]])
        hot = np.zeros(part.shape, np.float32)
        hot[offsets + values] = 1.0
        return hot
    x = np.asarray(value, dtype=np.float32)
    if len(part.shape) == 3:
        if part.channels_last:
            x = x.reshape(part.shape[1], part.shape[2], part.shape[0]).transpose(2, 0, 1)
        return x.ravel() / 255.0
    return x.ravel()


class FlatObservation(gym.ObservationWrapper):
    """Any observation this file encodes as one float32 vector (observation_parts, encode)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.parts = observation_parts(env.observation_space)
        size = sum(math.prod(part.shape) for part in self.parts)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)

    def observation(self, observation) -> np.ndarray:
        values = []
        for part in self.parts:
            value = observation
            for key in part.keys:
                value = value[key]
            values.append(encode(part, value))
        return np.concatenate(values)


def needs_flattening(obs_space: gym.Space) -> bool:
    """Every observation space but a plain 1-D Box of numbers (which the MLP takes as it is)."""
    return not (
        isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1 and not is_image(obs_space)
    )


class GameStats(gym.Wrapper):
    """Innermost wrapper: each game's raw return and length (before reward clipping and lost lives), put in
    the info of its last step; snapshot()/restore() pickle the env beneath it, for envs listed in RESTORABLE.
    """

    def __init__(self, env: gym.Env, index: int):
        super().__init__(env)
        self.index, self.game_return, self.game_length = index, 0.0, 0

    def reset(self, **kwargs):
        self.game_return, self.game_length = 0.0, 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_return += float(reward)
        self.game_length += 1
        if terminated or truncated:
            info = {
                **info,
                "game_over": True,
                "game_return": self.game_return,
                "game_length": self.game_length,
            }
        return obs, reward, terminated, truncated, info

    def snapshot(self) -> bytes:
        return pickle.dumps((self.env, self.game_return, self.game_length))

    def restore(self, snapshots: list) -> None:
        self.env, self.game_return, self.game_length = pickle.loads(snapshots[self.index])


class EpisodicLife(gym.Wrapper):
    """A lost life ends the episode (the value target), not the game: reset() then steps a no-op (CleanRL)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives, self.game_over = 0, True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        terminated = terminated or 0 < lives < self.lives
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs):
        if self.game_over:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info


class FireReset(gym.Wrapper):
    """Press FIRE after every reset, for games that wait for it (CleanRL's FireResetEnv)."""

    def reset(self, **kwargs):
        self.env.reset(**kwargs)
        for action in (1, 2):
            obs, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info


class ClipReward(gym.RewardWrapper):
    """The sign of the reward (the game's own score is in GameStats)."""

    def reward(self, reward):
        return float(np.sign(reward))


def make_env(env_id: str, atari: bool, render: bool, index: int) -> gym.Env:
    """One env: GameStats innermost; any observation but a vector flattened into one (FlatObservation); for
    Atari CleanRL's preprocessing (no-op reset, max-and-skip 4, episodic life, fire reset, reward clipping,
    84x84 grayscale, 4 stacked frames)."""
    kwargs = {"render_mode": "rgb_array"} if render else {}
    if not atari:
        env = GameStats(gym.make(env_id, **kwargs), index)
        return FlatObservation(env) if needs_flattening(env.observation_space) else env
    env = GameStats(gym.make(env_id, frameskip=1, **kwargs), index)  # the preprocessing skips the frames
    env = EpisodicLife(gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84))
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireReset(env)
    return gym.wrappers.FrameStackObservation(ClipReward(env), 4)


class GymEnv:
    """`num_envs` Gymnasium envs of --env-id in a vector env that autoresets in the same step (the step that
    ends an episode returns the next one's first observation, so no transition mixes two episodes). Env i of
    rank r has global id r * num_envs + i and seed hash(seed, id). Actions: Discrete(n) as one integer per env
    (n_actions = n), MultiDiscrete as a row of integers per env (n_actions = its sizes, flattened)."""

    steps_on = "cpu"

    def __init__(
        self, num_envs: int, device="cpu", seed: int = 1, env_id_offset: int = 0, cfg: Args | None = None
    ):
        cfg = cfg or Args()
        spec, atari, frames_too = env_kind(
            cfg
        )  # every env renders its own frames (--capture-video, --render)
        self.num_envs, self.device = num_envs, torch.device(device)
        self.restorable = spec.entry_point.startswith(RESTORABLE) and not atari
        fns = [partial(make_env, cfg.env_id, atari, frames_too, i) for i in range(num_envs)]
        same_step = gym.vector.AutoresetMode.SAME_STEP
        vector = gym.vector.SyncVectorEnv if cfg.vector_mode == "sync" else gym.vector.AsyncVectorEnv
        self.vec = vector(fns, autoreset_mode=same_step)
        self.obs_shape = tuple(self.vec.single_observation_space.shape)
        action_space = self.vec.single_action_space
        if isinstance(action_space, gym.spaces.Discrete):
            self.n_actions = int(action_space.n)
        else:
            self.n_actions = tuple(int(n) for n in action_space.nvec.ravel())
        self.action_start, self.env_action_shape = action_space.start, action_space.shape
        frames = spec.max_episode_steps or spec.kwargs.get("max_num_frames_per_episode") or 10**9
        self.max_episode_steps = frames // 4 if atari else frames  # 108,000 Atari frames = 27,000 steps
        self.env_ids = list(range(env_id_offset, env_id_offset + num_envs))  # global env ids
        self.seeds = [int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in self.env_ids]

    def reset(self) -> torch.Tensor:
        """Restart every env from its seed: the same seed and ids always give the same episodes."""
        obs, _ = self.vec.reset(seed=self.seeds)
        return torch.from_numpy(obs).to(self.device)

    def step(self, actions: torch.Tensor):
        """Step every env; returns obs, reward (float32), done (a lost life too) and, where info["game_over"],
        the finished game's episode_return (raw, unclipped) and episode_length."""
        env_actions = actions.cpu().numpy().reshape(self.num_envs, *self.env_action_shape) + self.action_start
        obs, reward, terminated, truncated, infos = self.vec.step(env_actions)
        final = infos.get("final_info", {})
        over = final.get("_game_over", np.zeros(self.num_envs, dtype=bool))
        scalars = np.stack(
            [
                reward,
                terminated | truncated,
                over,
                np.where(over, final.get("game_return", 0.0), 0.0),
                np.where(over, final.get("game_length", 0), 0),
            ],
            1,
        ).astype(np.float32)
        s = torch.from_numpy(scalars).to(self.device)
        info = {"game_over": s[:, 2].bool(), "episode_return": s[:, 3], "episode_length": s[:, 4]}
        return torch.from_numpy(obs).to(self.device), s[:, 0], s[:, 1].bool(), info

    def state_dict(self) -> dict | None:
        return {"envs": list(self.vec.call("snapshot"))} if self.restorable else None

    def load_state_dict(self, state: dict) -> None:
        if len(state["envs"]) != self.num_envs:
            raise ValueError(f"GymEnv: {len(state['envs'])} saved envs, want {self.num_envs}")
        self.vec.call("restore", state["envs"])

    def frame(self, i: int) -> np.ndarray:
        """Env i's rgb_array frame."""
        if isinstance(self.vec, gym.vector.SyncVectorEnv):
            return self.vec.envs[i].render()
        return self.vec.call("render")[i]


Env = GymEnv
EPISODE_METRICS = {  # info key: tag in TensorBoard and progress.csv; the first is the headline
    "episode_return": "charts/episodic_return",
    "episode_length": "charts/episodic_length",
}


def random_actions(gen: torch.Generator):
    """Valid random actions for Discrete and MultiDiscrete action spaces."""

    def policy(env: GymEnv, obs: torch.Tensor) -> torch.Tensor:
        if isinstance(env.n_actions, int):
            return torch.randint(0, env.n_actions, (env.num_envs,), generator=gen)
        return torch.stack([torch.randint(0, n, (env.num_envs,), generator=gen) for n in env.n_actions], -1)

    return policy


BASELINES = {"random": random_actions}


def draw(env: GymEnv, i: int) -> np.ndarray:
    """Env i's own rgb_array frame."""
    return np.ascontiguousarray(env.frame(i), dtype=np.uint8)


def render(env: GymEnv, i: int, width: int = 80) -> str:
    """Env i's frame in the terminal: at most `width` columns, two pixels per character (24-bit colour)."""
    frame = draw(env, i)
    step = max(1, -(-frame.shape[1] // width))
    image = frame[::step, ::step]
    if len(image) % 2:
        image = np.concatenate([image, np.zeros_like(image[:1])])
    rows = []
    for top, bottom in zip(image[0::2], image[1::2], strict=True):
        cells = (
            f"\033[38;2;{a[0]};{a[1]};{a[2]}m\033[48;2;{b[0]};{b[1]};{b[2]}m\u2580"
            for a, b in zip(top, bottom, strict=True)
        )
        rows.append("".join(cells) + "\033[0m")
    return "\n".join(rows)


# == Agent: CleanRL's, ppo.py's MLP on vectors, ppo_atari.py's Nature CNN on Atari screens ==
def layer_init(layer: nn.Module, std: float = math.sqrt(2), bias_const: float = 0.0) -> nn.Module:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


def nature_cnn(channels: int) -> list[nn.Module]:
    """The Nature DQN's convolutions (ppo_atari.py's), for images of 36 pixels a side and more."""
    return [
        layer_init(nn.Conv2d(channels, 32, 8, stride=4)),
        nn.ReLU(),
        layer_init(nn.Conv2d(32, 64, 4, stride=2)),
        nn.ReLU(),
        layer_init(nn.Conv2d(64, 64, 3, stride=1)),
        nn.ReLU(),
        nn.Flatten(),
    ]


def small_cnn(channels: int, side: int) -> list[nn.Module]:
    """Two 3x3 convolutions for smaller images (MiniGrid's 7 x 7): stride 2 from 16 pixels a side."""
    stride = 2 if side >= 16 else 1
    return [
        layer_init(nn.Conv2d(channels, 16, 3, stride=stride, padding=1)),
        nn.ReLU(),
        layer_init(nn.Conv2d(16, 32, 3, stride=stride, padding=1)),
        nn.ReLU(),
        nn.Flatten(),
    ]


class PartsEncoder(nn.Module):
    """The flat observation vector split into its parts: each image through a CNN sized to it, every other
    part as it is, all concatenated."""

    def __init__(self, parts: list[ObsPart]):
        super().__init__()
        self.shapes = [part.shape for part in parts]
        self.encoders = nn.ModuleList()
        self.size = 0
        for shape in self.shapes:
            if len(shape) == 3:
                side = min(shape[1:])
                encoder = nn.Sequential(*(nature_cnn(shape[0]) if side >= 36 else small_cnn(shape[0], side)))
                with torch.no_grad():
                    self.size += encoder(torch.zeros(1, *shape)).shape[1]
            else:
                encoder = nn.Identity()
                self.size += shape[0]
            self.encoders.append(encoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.split([math.prod(shape) for shape in self.shapes], -1)
        features = zip(self.encoders, parts, self.shapes, strict=True)
        return torch.cat([encoder(part.unflatten(-1, shape)) for encoder, part, shape in features], -1)


class Agent(nn.Module):
    """Vectors (any space flattened, one-hot where discrete): separate actor and critic MLPs (two tanh layers
    each), behind a CNN per image part where there are images. Atari screens (uint8 [4, 84, 84]): the Nature
    CNN shared by a linear actor and critic. MultiDiscrete actions: one categorical head per dimension."""

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int | tuple[int, ...], args: Args):
        super().__init__()
        self.discrete = isinstance(n_actions, int)
        self.nvec = [n_actions] if self.discrete else list(n_actions)
        n_logits = sum(self.nvec)
        if len(obs_shape) == 1:
            mlp = lambda n_in, n_out, std: nn.Sequential(  # noqa: E731
                layer_init(nn.Linear(n_in, args.hidden_size)),
                nn.Tanh(),
                layer_init(nn.Linear(args.hidden_size, args.hidden_size)),
                nn.Tanh(),
                layer_init(nn.Linear(args.hidden_size, n_out), std=std),
            )
            _, obs_space, _, _ = env_spaces(args.env_id)
            parts = observation_parts(obs_space) if needs_flattening(obs_space) else []
            images = any(len(part.shape) == 3 for part in parts)
            self.trunk, self.scale = PartsEncoder(parts) if images else nn.Identity(), 1.0
            n_in = self.trunk.size if images else obs_shape[0]
            self.actor, self.critic = mlp(n_in, n_logits, 0.01), mlp(n_in, 1, 1.0)
        else:
            self.trunk = nn.Sequential(*nature_cnn(obs_shape[0]))
            with torch.no_grad():
                n_flat = self.trunk(torch.zeros(1, *obs_shape)).shape[1]
            self.trunk.append(layer_init(nn.Linear(n_flat, 512)))
            self.trunk.append(nn.ReLU())
            self.scale = 1.0 / 255.0  # uint8 frames
            self.actor, self.critic = (
                layer_init(nn.Linear(512, n_logits), std=0.01),
                layer_init(nn.Linear(512, 1), std=1.0),
            )

    def initial_memory(self, n: int, device) -> None:
        """No memory: the stacked frames are all there is."""
        return None

    def forward(self, obs: torch.Tensor, memory=None, done=None, action=None, greedy: bool = False):
        """(action, log-prob, entropy, value, memory); samples an action unless one is given (MultiDiscrete:
        one column per dimension, their log-probs and entropies summed). Memoryless: memory and done (the
        contract's, for agents with memory) pass through unused."""
        hidden = self.trunk(obs.float() * self.scale)
        logits = self.actor(hidden).float()  # fp32 under autocast
        parts = logits.split(self.nvec, -1)  # one part per action dimension
        heads = [Categorical(logits=part, validate_args=False) for part in parts]
        if action is None:
            sampled = [
                part.argmax(-1) if greedy else h.sample() for part, h in zip(parts, heads, strict=True)
            ]
            action = sampled[0] if self.discrete else torch.stack(sampled, -1)
        columns = [action] if self.discrete else action.unbind(-1)
        logprob = sum(head.log_prob(a) for head, a in zip(heads, columns, strict=True))
        entropy = sum(head.entropy() for head in heads)
        return action, logprob, entropy, self.critic(hidden).squeeze(-1), memory


# == Algorithm: the schedule, advantages, the loss, the argument checks ==
def learning_rate_at(args: Args, progress: float) -> float:
    """The learning rate at progress p = global_step / total_timesteps in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    factor = {"linear": 1.0 - p, "constant": 1.0}
    return args.learning_rate * factor[args.lr_schedule]


def compute_gae(rewards, values, dones, next_value, next_done, gamma: float, gae_lambda: float):
    """Advantages and returns [T, N]; dones[t] = 1: obs[t] began an episode, nothing flows back across it."""
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        not_done = 1.0 - (next_done if t == rewards.shape[0] - 1 else dones[t + 1])
        next_v = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        delta = rewards[t] + gamma * next_v * not_done - values[t]
        last_gae = delta + gamma * gae_lambda * not_done * last_gae
        advantages[t] = last_gae
    return advantages, advantages + values


def ppo_loss(model: nn.Module, minibatch: dict, args: Args) -> tuple[torch.Tensor, dict]:
    """PPO's clipped loss on one minibatch (a dict of its tensors); returns (loss, its statistics by name)."""
    _, newlogprob, entropy, newvalue, _ = model(minibatch["obs"], action=minibatch["actions"])
    logratio = newlogprob.float() - minibatch["logprobs"]
    ratio = logratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio - 1.0).abs() > args.clip_coef).float().mean()
    adv = minibatch["advantages"]
    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
    newvalue, returns, values = newvalue.float(), minibatch["returns"], minibatch["values"]
    v_loss = (newvalue - returns) ** 2
    if args.clip_vloss:
        v_clipped = values + (newvalue - values).clamp(-args.clip_coef, args.clip_coef)
        v_loss = torch.max(v_loss, (v_clipped - returns) ** 2)
    v_loss = 0.5 * v_loss.mean()
    entropy_loss = entropy.float().mean()
    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef
    stats = {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": entropy_loss}
    return loss, {**stats, "approx_kl": approx_kl, "clipfrac": clipfrac}


def check_args(args: Args, world_size: int) -> None:
    """ArgError on a setting of this file that cannot train (the operations check their own flags first)."""
    for name in "num_minibatches update_epochs learning_rate max_grad_norm clip_coef hidden_size".split():
        if getattr(args, name) <= 0:
            raise ArgError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    batch = args.num_envs * args.num_steps
    if batch % args.num_minibatches:
        raise ArgError(f"batch {batch} not divisible by --num-minibatches {args.num_minibatches}")
    if args.target_kl is not None and args.target_kl <= 0:
        raise ArgError("--target-kl must be positive")
    if not (0 <= args.gamma <= 1 and 0 <= args.gae_lambda <= 1):
        raise ArgError("--gamma and --gae-lambda must be in [0, 1]")
    env_kind(args)  # an environment this file can train on


# == Training: the PPO loop, in the order it runs; `run` (below the line) does the operations ==
def train(args: Args, run: "Run") -> None:
    """Each rank collects a rollout of its own envs with the plain agent, then trains through DDP."""
    device, rank, num_steps, num_envs = run.device, run.rank, args.num_steps, args.num_envs
    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    autocast = partial(torch.autocast, device.type, torch.bfloat16, enabled=args.precision == "bf16")

    # This rank's envs (global ids rank * num_envs onwards), the agent (the same weights on every rank), the
    # optimizer, and a generator that draws the same minibatch permutations on every rank
    envs = Env(num_envs, device, args.seed, rank * num_envs, args)
    dropped = dropped_parts(env_spaces(args.env_id)[1])
    if rank == 0 and dropped:
        print(f"observation parts left out (text: no encoding here): {', '.join(dropped)}")
    torch.manual_seed(args.seed)
    agent = Agent(envs.obs_shape, envs.n_actions, args).to(device)
    torch.manual_seed(args.seed + rank)  # action sampling differs per rank
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    minibatch_rng = torch.Generator(device).manual_seed(args.seed)
    next_obs, next_done = envs.reset(), torch.zeros(num_envs, device=device)

    # Rollout storage: every step of every env, [num_steps, num_envs, ...]
    storage = {"obs": torch.zeros((num_steps, *next_obs.shape), dtype=next_obs.dtype, device=device)}
    action_shape = () if isinstance(envs.n_actions, int) else (len(envs.n_actions),)  # MultiDiscrete: a row
    storage["actions"] = torch.zeros((num_steps, num_envs, *action_shape), dtype=torch.long, device=device)
    for key in ("logprobs", "rewards", "dones", "values", "advantages", "returns"):
        storage[key] = torch.zeros((num_steps, num_envs), device=device)

    # Checkpoints hold what every rank shares (saved once), this rank's envs and random streams, and where
    # its rollout stands; a continued run (--resume, a torchrun restart, a requeue) gets it all back here
    shared = {"agent": agent, "optimizer": optimizer, "minibatch_rng": minibatch_rng}
    next_obs, next_done = run.resume(shared, envs, next_obs, next_done)

    # DDP: training forwards go through `model`, whose backward() averages the gradients of all ranks;
    # rollouts use the plain `agent`. A loss that leaves a parameter without a gradient needs find_unused
    probe = {key: value[0] for key, value in storage.items()}  # one step of every env, for the loss to try
    find_unused = run.find_unused(agent, lambda: ppo_loss(agent, probe, args)[0])
    model = DDP(
        agent, device_ids=run.device_ids, find_unused_parameters=find_unused, static_graph=args.static_graph
    )
    policy = torch.compile(agent) if args.compile else agent
    model = torch.compile(model) if args.compile else model

    for update in range(run.first_update, run.num_updates + 1):
        # The learning rate at this update's progress (the share of total_timesteps done before it)
        learning_rate = learning_rate_at(args, run.global_step / args.total_timesteps)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate

        # Rollout: num_steps steps of every env with the plain agent; each ended game's metrics are summed
        with run.timed("rollout"), torch.inference_mode(), autocast():
            for step in range(num_steps):
                storage["obs"][step], storage["dones"][step] = next_obs, next_done
                action, logprob, _, value, _ = policy(next_obs)
                storage["actions"][step], storage["logprobs"][step] = action, logprob.float()
                storage["values"][step] = value.float()
                next_obs, reward, done, info = envs.step(action)
                storage["rewards"][step], next_done = reward, done.float()
                run.count_episodes(done, info)
            next_value = policy(next_obs)[3].float()

            # Advantages: GAE over this rank's rollout, bootstrapped from the value where it stopped
            rollout = (storage["rewards"], storage["values"], storage["dones"], next_value, next_done)
            storage["advantages"], storage["returns"] = compute_gae(*rollout, args.gamma, args.gae_lambda)

        # Update: update_epochs passes over the batch in num_minibatches minibatches. Every rank draws the
        # same permutation of its own batch, so global minibatch k is every rank's k-th minibatch together
        batch = {key: value.flatten(0, 1) for key, value in storage.items()}  # [T, N, ...] -> [T * N, ...]
        stats = {}  # each statistic of every minibatch, averaged when the update ends
        with run.timed("update"):
            for _epoch in range(args.update_epochs):
                order = torch.randperm(run.batch_size, generator=minibatch_rng, device=device)
                minibatches = order.chunk(args.num_minibatches)
                advantages = batch["advantages"]
                if args.norm_adv:  # by the mean and std of each global minibatch: every rank's part of it
                    advantages = normalize_over_ranks(advantages, minibatches)
                kls = []
                for indices in minibatches:
                    minibatch = {key: value[indices] for key, value in batch.items()}
                    minibatch["advantages"] = advantages[indices]
                    with autocast():
                        loss, loss_stats = ppo_loss(model, minibatch, args)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()  # DDP averages the gradients over the ranks here
                    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                    for name, value in {**loss_stats, "grad_norm": grad_norm}.items():
                        stats.setdefault(name, []).append(value.detach().float())
                    kls.append(loss_stats["approx_kl"])
                # the mean KL of every rank decides, so every rank stops at the same epoch
                if args.target_kl is not None and mean_over_ranks(torch.stack(kls).mean()) > args.target_kl:
                    break

        # Operations: every rank's statistics to rank 0's log, evaluation, checkpoints; a stop ends here
        var_returns = batch["returns"].var()
        explained_var = 1 - (batch["returns"] - batch["values"]).var() / var_returns
        metrics = {f"losses/{name}": torch.stack(values).mean() for name, values in stats.items()}
        metrics["losses/explained_variance"] = torch.where(var_returns > 0, explained_var, 0.0)
        metrics["charts/learning_rate"] = learning_rate
        if run.end_update(update, metrics, next_obs, next_done):
            break


# TRY NOT TO MODIFY: operations, byte-identical in every PPO script, called by the loop (docs/template.md)
class StopEveryRank(RuntimeError):
    """A failure every rank raises alike (a checkpoint rank 0 could not write): one line each, exit code 1."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # a scheduler's or torchrun's SIGTERM, SLURM's USR1 warning
PREEMPTED = 75  # the exit code of a run stopped by a signal, its last update checkpointed: run it again
stop_request = {"signal": 0}  # set by a signal; the ranks read every request together at the end of an update


# == The DDP way: what no rank may compute or decide from its own samples alone ==
def normalize_over_ranks(x: torch.Tensor, groups: list | None = None) -> torch.Tensor:
    """x standardized by the mean and unbiased std of every rank's x together; with `groups` (index tensors:
    an epoch's minibatches), each group by every rank's same group: one all-reduce, of 3 sums per group."""
    groups = groups or [slice(None)]
    x64 = x.detach().double()
    parts = [torch.stack([x64[g].sum(), x64[g].square().sum(), x64.new_tensor(x[g].numel())]) for g in groups]
    sums = torch.stack(parts)
    dist.all_reduce(sums)
    count = sums[:, 2]
    mean = sums[:, 0] / count
    std = ((sums[:, 1] - count * mean * mean) / (count - 1).clamp(min=1)).clamp(min=0).sqrt()
    out = torch.empty_like(x)
    for k, g in enumerate(groups):
        out[g] = (x[g] - mean[k].to(x.dtype)) / (std[k].to(x.dtype) + 1e-8)
    return out


def mean_over_ranks(x: torch.Tensor) -> float:
    """The mean of a scalar over all ranks, on the host: the same number everywhere, for a shared decision."""
    total = x.detach().float().reshape(1).clone()
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def sum_over_ranks(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor summed over all ranks, in one all-reduce: statistics merged from every rank's samples."""
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    return tuple(
        part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors, strict=True)
    )


def unused_parameters(agent: nn.Module, loss_fn) -> list[str]:
    """Names of the parameters that loss_fn()'s loss gives no gradient (DDP refuses them unless told)."""
    named = [(name, p) for name, p in agent.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(), [p for _, p in named], allow_unused=True)
    return [name for (name, _), grad in zip(named, grads, strict=True) if grad is None]


# == Argument checks and sizes: a pure function of (args, world size), so every rank reaches one verdict ==
AUTO_MIN_UPDATES = 100  # --num-envs 0 picks no more envs than leave this many updates
FEW_UPDATES = 10  # a run with fewer updates than this cannot learn much: the start-up warns


def validate(args: Args, world_size: int) -> None:
    """ArgError on what cannot run: the operations' own flags, then the script's (check_args). With
    --num-envs 0 the checks of sizes wait for the agreed number (main calls this again then)."""
    for name in ("num_steps", "total_timesteps", "eval_episodes", "dist_timeout"):
        if getattr(args, name) <= 0:
            raise ArgError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    global_batch = args.num_envs * args.num_steps * world_size
    checks = [
        (args.num_envs >= 0, f"--num-envs must be positive (or 0 = auto), got {args.num_envs}"),
        (
            min(args.checkpoint_interval, args.eval_interval) >= 0,
            "--checkpoint-interval and --eval-interval >= 0",
        ),
        (not args.render or args.eval_checkpoint, "--render needs --eval-checkpoint PATH"),
        (
            args.total_timesteps >= global_batch,
            f"--total-timesteps {args.total_timesteps} is below one update's "
            f"global batch ({args.num_envs} envs x {args.num_steps} steps x {world_size} ranks)",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ArgError(message)
    if args.num_envs:
        check_args(args, world_size)


def allowed_cpus() -> list[int]:
    return (
        sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else list(range(os.cpu_count() or 1))
    )


def cpu_share(allowed: list[int], local_rank: int, local_world: int) -> list[int]:
    """This local rank's equal, disjoint, contiguous slice of the allowed CPUs (one, round-robin, if few)."""
    per = max(1, len(allowed) // local_world)
    return allowed[local_rank * per % len(allowed) :][:per]


def device_num_envs(device: torch.device, local_world: int) -> int:
    """How many envs this rank's hardware holds: a CPU core each (steps_on "cpu"), else by device memory."""
    if Env.steps_on == "cpu":
        return len(cpu_share(allowed_cpus(), 0, local_world))
    if device.type == "cuda":  # 4096 per GiB, at most 65536
        return min(65536, 4096 * max(1, torch.cuda.get_device_properties(device).total_memory // 2**30))
    return 256 * torch.get_num_threads()


def auto_num_envs(cap: int, args: Args, world_size: int) -> int:
    """--num-envs 0: the largest power of two <= cap that leaves at least AUTO_MIN_UPDATES updates (>= 1)."""
    fit = args.total_timesteps // (max(1, args.num_steps) * world_size * AUTO_MIN_UPDATES)
    return 1 << (max(1, min(cap, fit)).bit_length() - 1)


def agree_num_envs(args: Args, device: torch.device, local_world: int) -> int:
    """--num-envs, or for 0 the auto choice for the smallest device (or node) of all ranks."""
    cap = torch.tensor([device_num_envs(device, local_world)], device=device)
    dist.all_reduce(cap, op=dist.ReduceOp.MIN)
    return args.num_envs or auto_num_envs(int(cap.item()), args, dist.get_world_size())


# == One verdict for all: rank 0 acts or reads, every rank gets its result ==
def on_rank0(fn, *args, doing: str = "act for every rank", keep: str = ""):
    """fn(*args) run by rank 0 alone; its result or failure (an OSError: exit 1), given to every rank. With
    `keep`, that key of the result (a dict) stays on rank 0: returns (the result, the kept value or None)."""
    result, failure, kept = None, None, None
    if dist.get_rank() == 0:
        try:
            result = fn(*args)
        except (ArgError, StopEveryRank) as e:
            failure = e
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
            failure = StopEveryRank(f"cannot {doing}: {type(e).__name__}: {str(e).splitlines()[0]}")
        kept = result.pop(keep) if keep and result else None
    verdict = [result, failure]
    dist.broadcast_object_list(verdict, src=0)
    if verdict[1] is not None:
        raise verdict[1]
    return (verdict[0], kept) if keep else verdict[0]


def agree_run_name(args: Args) -> str:
    """--run-name, or <exp_name>__<seed>__<SLURM job id, else torchrun's run id, else the clock>: rank 0's."""
    launch = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID", "")[:8]
    launch = launch or int(time.time())
    return on_rank0(lambda: args.run_name or f"{args.exp_name}__{args.seed}__{launch}")


def gather_to_rank0(obj) -> list | None:
    """Every rank's `obj`, as a list indexed by rank, on rank 0 alone (None elsewhere)."""
    everyone = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, everyone, dst=0)
    return everyone


def gather_stats(stats: dict, device: torch.device) -> dict[str, list[float]]:
    """Every rank's value of each named scalar, by name (one all_gather, in float64; one host copy)."""
    mine = torch.stack([torch.as_tensor(v, device=device).double().reshape(()) for v in stats.values()])
    everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    return dict(zip(stats, torch.stack(everyone, 1).tolist(), strict=True))


def reduce_stats(stats: dict[str, list[float]]) -> dict[str, float]:
    """What rank 0 logs of every rank's statistics: episode metrics over all ranks' episodes, the slowest
    rank's times, and the mean over ranks of every metric the loop reports (losses/, charts/, ...)."""
    episodes = sum(stats["episodes"])
    row = {tag: sum(stats[key]) / episodes for key, tag in EPISODE_METRICS.items() if episodes}
    row |= {f"time/{phase}": max(stats[phase]) for phase in ("rollout_s", "update_s")}
    row |= {key: sum(v) / len(v) for key, v in stats.items() if "/" in key}
    return {**row, "charts/episodes": episodes}


def state_tensors(state, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested state (dicts, lists, tuples), by its path: what check_identical compares."""
    if torch.is_tensor(state):
        return {prefix: state}
    items = ()
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    return {
        path: t
        for key, value in items
        for path, t in state_tensors(value, f"{prefix}.{key}".strip(".")).items()
    }


def check_identical(shared: dict, when: str) -> None:
    """Every rank holds bit-identical shared state (weights, buffers, optimizer, generators): rank 0's raw
    bytes, broadcast and compared on every rank; names what differs."""
    tensors = state_tensors({name: state_of(obj) for name, obj in shared.items()})
    device = next(iter(shared["agent"].parameters())).device
    raw = [t.detach().reshape(-1).contiguous().view(torch.uint8).to(device) for t in tensors.values()]
    mine = torch.cat(raw) if raw else torch.zeros(0, dtype=torch.uint8, device=device)
    ref = mine.clone()
    dist.broadcast(ref, 0)
    ends = np.cumsum([len(r) for r in raw]).tolist()
    spans = zip(tensors, [0, *ends[:-1]], ends, strict=True)
    differ = [name for name, a, b in spans if not torch.equal(mine[a:b], ref[a:b])]
    flags = torch.zeros(dist.get_world_size(), dtype=torch.int32, device=device)
    flags[dist.get_rank()] = len(differ)
    dist.all_reduce(flags)
    if flags.any():
        ranks = flags.nonzero().flatten().tolist()
        named = f" ({', '.join(differ[:5])}{', ...' if len(differ) > 5 else ''})" if differ else ""
        raise StopEveryRank(
            f"the state differs across ranks {when}: rank(s) {ranks} differ from rank 0{named}"
        )


def broadcast_modules(shared: dict) -> None:
    """Every rank takes rank 0's weights and buffers of each module in `shared`, in place."""
    for module in (obj for obj in shared.values() if isinstance(obj, nn.Module)):
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, 0)


def check_disjoint_envs(envs) -> None:
    """No two ranks hold the same global env id (ranks with the same envs train on copies of each other)."""
    ids = torch.as_tensor(envs.env_ids, device=envs.device).long().reshape(-1)
    everyone = [torch.zeros_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, ids)
    together = torch.cat(everyone)
    if len(together.unique()) < len(together):
        first = [int(e[0]) for e in everyone]
        raise StopEveryRank(
            f"the ranks' envs overlap (their first global env ids: {first}): seed each rank's own"
        )


def clock(device: torch.device) -> float:
    """time.perf_counter() once the device has done its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# == The run: the services the loop calls, each owning its own branches ==
class Run(contextlib.AbstractContextManager):
    """One rank's operations around the PPO loop: agreed sizes, the run directory, resume, episode statistics,
    timing, rank 0's log, evaluation, checkpoints, stop requests and the end of the run."""

    def __init__(self, args: Args, device: torch.device, cpus: list[int], local_world: int):
        self.args, self.device = args, device
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device_ids = [device.index] if device.type == "cuda" else None  # for DDP(device_ids=...)
        args.run_name = agree_run_name(args)
        self.run_dir = Path("runs") / args.run_name
        # the checkpoint to continue from (None: a fresh run), every rank's part of it on rank 0
        self.saved, parts = on_rank0(
            read_run_dir, self.run_dir, args, doing=f"read {self.run_dir}", keep="ranks"
        )
        args.num_envs = resolve_num_envs(args, self.saved, device, local_world)
        validate(args, self.world_size)  # the same verdict on every rank: the sizes are agreed
        self.batch_size = args.num_envs * args.num_steps  # per rank
        self.global_batch_size = self.batch_size * self.world_size
        self.first_update = self.saved["update"] + 1 if self.saved else 1
        self.global_step = self.saved["global_step"] if self.saved else 0  # all ranks', before this update
        steps_left = args.total_timesteps - self.global_step
        self.num_updates = self.first_update - 1 + steps_left // self.global_batch_size
        if self.saved:  # each rank's own part: its envs (moved to the rank that now holds them), RNG, rollout
            self.saved |= scatter_parts(parts, args, self.world_size)
        placement = {"host": socket.gethostname(), "device": str(device), "cpus": cpus}
        self.placement = gather_to_rank0({**placement, "threads": torch.get_num_threads()})
        self.episodes = {key: torch.zeros((), device=device) for key in ("episodes", *EPISODE_METRICS)}
        self.times, self.update_started, self.session_started = {}, None, time.perf_counter()
        self.shared, self.envs, self.meta = {}, None, {}
        self.log, self.evals = None, []  # rank 0's files (opened at its first update's end), async runs
        self.last_update, self.stop_signals = self.first_update - 1, []
        if self.rank == 0:
            size = f"{args.num_envs} envs per rank, batch {self.global_batch_size}"
            size += f", {self.num_updates} updates"
            print(f"run {args.run_name}: world size {self.world_size}, device {device}, {size}")
            if self.saved and self.saved["layout"]:
                print(self.saved["layout"])
            if self.num_updates < FEW_UPDATES:
                warning = f"warning: only {self.num_updates} updates: PPO learns little in so few"
                print(warning, file=sys.stderr)

    def resume(self, shared: dict, envs, *rollout_start):
        """Remember what checkpoints hold; for a continued run, restore it in place and return its rollout
        start (the per-env tensors given, e.g. next_obs and next_done), else return those as given."""
        self.shared, self.envs = shared, envs
        self.meta = {"args": asdict(self.args), "world_size": self.world_size}
        self.meta |= {"obs_shape": envs.obs_shape, "n_actions": envs.n_actions}
        check_disjoint_envs(envs)
        broadcast_modules(shared)  # rank 0's initial weights (their init can follow a rank's thread count)
        if self.saved:
            rollout_start = restore(self.saved, shared, envs, rollout_start, self.args.seed)
            update, path = self.saved["update"], self.saved["path"]
            restart = "the environments cannot save their state: their episodes restart (all else restored)"
            if self.rank == 0:
                print(f"resumed from {path} at update {update}, global_step {self.global_step:,}")
                if self.saved["env_saved"] is False:
                    print(restart)
            self.saved = None
        check_identical(shared, "at the start")
        return rollout_start[0] if len(rollout_start) == 1 else rollout_start

    def find_unused(self, agent: nn.Module, loss_fn) -> bool:
        """DDP's find_unused_parameters: --find-unused on/off; auto: does loss_fn() leave one unused."""
        unused = unused_parameters(agent, loss_fn)
        find_unused = bool(unused) if self.args.find_unused == "auto" else self.args.find_unused == "on"
        if unused and not find_unused:
            refusal = "which DDP refuses ('Expected to have finished reduction in the prior iteration')"
            fixes = "--find-unused, or a loss that uses every output"
            raise ArgError(f"the loss gives no gradient to {', '.join(unused)}, {refusal}; fix: {fixes}")
        if self.rank == 0:
            why = f"unused parameters: {', '.join(unused) or 'none'}"
            print(f"{why}, so find_unused_parameters={find_unused} (--find-unused {self.args.find_unused})")
        return find_unused

    def count_episodes(self, done: torch.Tensor, info: dict) -> None:
        """Add each ended game's metrics (EPISODE_METRICS) to this update's sums, on the device."""
        game_over = info.get("game_over", done)  # a lost life ends the value target (done), a game these
        self.episodes["episodes"] += game_over.sum()
        for key in EPISODE_METRICS:
            self.episodes[key] += torch.where(game_over, info[key], 0).sum()

    @contextlib.contextmanager
    def timed(self, phase: str):
        """Time a phase of the update (rollout, update) into time/<phase>_s; the first starts the update."""
        start = clock(self.device)
        self.update_started = self.update_started or start
        yield
        self.times[f"{phase}_s"] = clock(self.device) - start

    def end_update(self, update: int, metrics: dict, *rollout_start) -> bool:
        """Every rank's statistics to rank 0's log, evaluation and checkpoints when due; True: a stop was
        asked (by a signal to any rank) and every rank stops here, this update checkpointed."""
        args = self.args
        check_finite(self.shared["agent"], update)
        if self.rank == 0 and self.log is None:  # rank 0 writes the run directory from the first update's end
            config = {**asdict(args), **self.sizes(), "torch_version": torch.__version__}
            config |= {"device": str(self.device), "ranks": self.placement}
            start = self.global_step  # the steps before this session's first update
            self.log = RunLog(self.run_dir, config, args, update - 1, start, self.session_started)
        elapsed = clock(self.device) - self.update_started
        mine = {**self.episodes, **metrics, **{p: self.times.get(p, 0.0) for p in ("rollout_s", "update_s")}}
        stats = gather_stats(
            {**mine, "sps": self.batch_size / elapsed, "signal": stop_request["signal"]}, self.device
        )
        for total in self.episodes.values():
            total.zero_()
        stopping = any(stats["signal"]) and update < self.num_updates  # one rank's signal stops all here
        last = update == self.num_updates or stopping
        self.global_step += self.global_batch_size
        eval_stats = self.evaluate(update, self.global_step, stopping, last)
        if self.rank == 0:
            sps = self.global_batch_size / (time.perf_counter() - self.update_started)
            row = {
                "update": update,
                "global_step": self.global_step,
                "charts/SPS": sps,
                **reduce_stats(stats),
            }
            self.log.write(row | eval_stats, stats["sps"], last)
        if stopping or (args.checkpoint_interval and update % args.checkpoint_interval == 0):
            self.checkpoint(update, rollout_start)
        self.last_update, self.update_started = update, None
        self.stop_signals = [signal.Signals(int(s)).name for s in stats["signal"] if s] if stopping else []
        return stopping

    def sizes(self) -> dict[str, int]:
        sizes = {"world_size": self.world_size, "batch_size_per_rank": self.batch_size}
        return {**sizes, "global_batch_size": self.global_batch_size, "num_updates": self.num_updates}

    def evaluate(self, update: int, global_step: int, stopping: bool, last: bool) -> dict[str, float]:
        """A greedy evaluation when due (never at a stop): local on rank 0 while the others wait at their next
        collective, or in a separate process; returns the newest results (rank 0; {} elsewhere)."""
        args, agent = self.args, self.shared["agent"]
        due = args.eval_mode != "none" and args.eval_interval and update % args.eval_interval == 0
        due = due and not stopping
        if self.rank != 0:
            return {}
        half, results = args.dist_timeout / 2, {}
        if due and args.eval_mode == "local":  # the other ranks wait at most half of --dist-timeout
            frames = [] if args.capture_video else None
            results = evaluate(
                greedy(agent), args, args.eval_episodes, device=self.device, frames=frames, limit=half
            )
            if frames:
                save_gif(frames, self.run_dir / "videos" / f"update_{update:08d}.gif")
        elif due:
            self.evals.append(start_async_eval(agent, self.meta, self.run_dir, update, global_step, args))
        if args.eval_mode == "async":  # the last row waits for those running, within the others' patience
            wait = 5.0 if stopping else half if last else 0  # (a stop: within its budget)
            results = collect_async_evals(self.evals, self.log.writer, wait) or results
        return results

    def checkpoint(self, update: int, rollout_start: tuple) -> None:
        """Rank 0 writes everything every rank needs to continue exactly, once it has checked they agree."""
        check_identical(self.shared, f"at update {update}")
        path = self.run_dir / "checkpoints" / f"update_{update:08d}.pt"
        shared = {"model": self.shared["agent"].state_dict(), **self.meta, "update": update}
        shared["global_step"] = self.global_step
        shared["shared"] = {name: state_of(obj) for name, obj in self.shared.items() if name != "agent"}
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if self.device.type == "cuda":  # its own GPU's
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        env_ids = torch.as_tensor(self.envs.env_ids).cpu()
        mine = {
            "env_ids": env_ids,
            "env": self.envs.state_dict(),
            "rng": rng,
            "rollout_start": list(rollout_start),
        }
        ranks = gather_to_rank0(to_cpu(mine))  # a failed write stops every rank; the earlier checkpoints stay
        on_rank0(atomic_save, {**shared, "ranks": ranks}, path, doing=f"write checkpoint {path}")
        self.checkpoint_path = path

    def finish(self) -> int:
        """After the loop: a stop says how to continue (exit 75); a run done saves final_model.pt (0)."""
        stopped = bool(self.stop_signals)
        check_identical(self.shared, "at the stop" if stopped else "at the end")
        if stopped:
            who, n = ", ".join(sorted(set(self.stop_signals))), len(self.stop_signals)
            how = "the same command with --resume continues (a torchrun restart or a SLURM requeue does so)"
            if self.rank == 0:
                at = f"at update {self.last_update}: checkpoint {self.checkpoint_path}"
                print(f"stopped by {who} ({n} of {self.world_size} ranks) {at}; {how}; exit code {PREEMPTED}")
            return PREEMPTED
        path = self.run_dir / "final_model.pt"
        on_rank0(
            atomic_save,
            {"model": self.shared["agent"].state_dict(), **self.meta},
            path,
            doing=f"write {path}",
        )
        if self.rank == 0:
            print(f"parameters identical on all {self.world_size} ranks after {self.last_update} updates")
            print(f"done: {self.global_step:,} steps; final model in {path}")
        return 0

    def __exit__(self, exc_type, *_):
        if self.log is not None:  # a stop signal cannot cut this short (it only sets stop_request)
            self.log.close(failed=exc_type is not None)


def check_finite(agent: nn.Module, update: int) -> None:
    """FloatingPointError on every rank alike when the weights (identical everywhere) are no longer finite."""
    if not torch.stack([p.isfinite().all() for p in agent.parameters()]).all():
        raise FloatingPointError(
            f"non-finite weights after update {update} (a NaN or infinite loss or gradient)"
        )


# == Checkpoints: one file by rank 0, the shared state and "ranks", each rank's own part ==
MODEL_KEYS = ("model", "args", "world_size", "obs_shape", "n_actions")  # final_model.pt; every checkpoint too
CHECKPOINT_KEYS = (*MODEL_KEYS, "update", "global_step", "shared", "ranks")
RESUME_MAY_CHANGE = (  # Args that may differ on a resume (and the world size); every other must be the same
    "exp_name run_name num_envs torch_deterministic cuda track wandb_project_name find_unused static_graph "
    "pin_cpus dist_timeout checkpoint_interval eval_interval eval_episodes eval_mode resume precision "
    "compile print_interval bench_env eval_checkpoint eval_json baseline render render_fps"
).split()


def state_of(obj):
    """What a checkpoint keeps of obj: a state_dict, a generator's state, or a list of those."""
    if isinstance(obj, list | tuple):
        return [state_of(x) for x in obj]
    return obj.get_state() if isinstance(obj, torch.Generator) else obj.state_dict()


def load_state(obj, state) -> None:
    """state_of's inverse, in place."""
    if isinstance(obj, list | tuple):
        for x, s in zip(obj, state, strict=True):
            load_state(x, s)
    elif isinstance(obj, torch.Generator):
        obj.set_state(state)
    else:
        obj.load_state_dict(state)


def restore(saved: dict, shared: dict, envs, rollout_start: tuple, seed: int) -> tuple:
    """A checkpoint back into the shared state, this rank's envs and random state; returns its rollout start
    (envs without a saved state keep their fresh episodes and the rollout start given)."""
    shared["agent"].load_state_dict(saved["model"])
    for name, obj in shared.items():
        if name != "agent":
            load_state(obj, saved["shared"][name])
    if saved["rng"] is None:  # on another world size: streams of this rank's own, drawn anew for this update
        stream = np.random.SeedSequence([seed, dist.get_rank(), saved["update"]]).generate_state(3)
        torch.manual_seed(int(stream[0]))
        np.random.seed(int(stream[1]))
        random.seed(int(stream[2]))
    else:
        torch.set_rng_state(saved["rng"]["torch"])
        np.random.set_state(saved["rng"]["numpy"])
        random.setstate(saved["rng"]["python"])
        if "cuda" in saved["rng"]:
            torch.cuda.set_rng_state(saved["rng"]["cuda"], envs.device)
    if saved["env"] is None:
        return rollout_start
    if len(saved["rollout_start"]) != len(rollout_start):
        counts = f"{len(saved['rollout_start'])} per-env tensors, the loop {len(rollout_start)}"
        what = "the same ones go to run.resume and run.end_update"
        raise StopEveryRank(f"the checkpoint's rollout start holds {counts}: {what}")
    envs.load_state_dict(saved["env"])
    return tuple(None if x is None else x.to(envs.device) for x in saved["rollout_start"])


def resolve_num_envs(args: Args, saved: dict | None, device: torch.device, local_world: int) -> int:
    """--num-envs; for 0 (auto), a continued run keeps its global number of envs where it divides among the
    ranks (every env goes on), else the auto choice for the smallest device of all ranks."""
    if args.num_envs:
        return args.num_envs
    world = dist.get_world_size()
    if saved and (saved["world_size"] * saved["args"]["num_envs"]) % world == 0:
        return saved["world_size"] * saved["args"]["num_envs"] // world
    return agree_num_envs(args, device, local_world)


def scatter_parts(parts: list | None, args: Args, world: int) -> dict:
    """This rank's part of the checkpoint, from rank 0. On the world size and envs it was written with, each
    rank's part as it was; else every env's state and rollout start moved by global env id to the rank that
    now holds it (the same global number of envs), or dropped (another number: the envs restart), and every
    rank's random streams drawn anew; "layout" says which, in a line."""
    layout = None
    if parts is not None:
        saved_envs = all(p["env"] is not None for p in parts)  # the envs could save their state
        parts = [{**p, "env_saved": saved_envs} for p in parts]
        old_world, old_envs = len(parts), len(parts[0]["env_ids"])
        if (old_world, old_envs) != (world, args.num_envs):
            before, now = old_world * old_envs, world * args.num_envs
            kept = before == now and saved_envs
            moved = "each env goes on with its episode on the rank that holds it now"
            restarted = f"{before} envs before, {now} now: every env restarts its episode"
            layout = f"written on {old_world} rank(s) x {old_envs} envs, on {world} x {args.num_envs} now"
            layout += f": {moved if kept else restarted}"
            layout += "; each rank's random streams are new"
            parts = reshard(parts, world, args.num_envs, kept)
    mine = [None]
    dist.scatter_object_list(mine, parts, src=0)
    return {**mine[0], "layout": layout}


def reshard(parts: list, world: int, num_envs: int, keep_envs: bool) -> list:
    """The ranks' parts for `world` ranks of `num_envs` envs: each env's state and rollout start, joined in
    global env id order and split again (keep_envs), or none; no random state (it is drawn anew)."""
    order = torch.cat([torch.as_tensor(p["env_ids"]) for p in parts]).argsort()
    joined = {
        "env": per_env(join_envs([p["env"] for p in parts]) if keep_envs else None, order),
        "rollout_start": per_env(
            join_envs([p["rollout_start"] for p in parts]) if keep_envs else None, order
        ),
    }
    new = []
    for r in range(world):
        envs = slice(r * num_envs, (r + 1) * num_envs)
        part = {
            "env_ids": torch.arange(world * num_envs)[envs],
            "rng": None,
            "env_saved": parts[0]["env_saved"],
        }
        new.append(part | {k: None if v is None else split_envs(v, envs) for k, v in joined.items()})
    return new


def join_envs(states: list):
    """Per-env states of several ranks joined along the env dimension: tensors concatenated, lists summed,
    dicts and lists of them joined item by item; None if any rank has none."""
    if any(s is None for s in states):
        return None
    first = states[0]
    if torch.is_tensor(first):
        return torch.cat(states)
    if isinstance(first, dict):
        return {k: join_envs([s[k] for s in states]) for k in first}
    if all(torch.is_tensor(x) or x is None for x in first):  # a rollout start: a list of per-env tensors
        return [join_envs([s[i] for s in states]) for i in range(len(first))]
    return [x for s in states for x in s]  # a list with an item per env


def per_env(state, order: torch.Tensor):
    """A joined per-env state taken in the order of the envs' global ids."""
    if state is None:
        return None
    if torch.is_tensor(state):
        return state[order]
    if isinstance(state, dict):
        return {k: per_env(v, order) for k, v in state.items()}
    if state and all(torch.is_tensor(x) or x is None for x in state):
        return [per_env(x, order) for x in state]
    return [state[i] for i in order.tolist()]


def split_envs(state, envs: slice):
    """The envs `envs` of a per-env state."""
    if state is None or torch.is_tensor(state):
        return None if state is None else state[envs].clone()
    if isinstance(state, dict):
        return {k: split_envs(v, envs) for k, v in state.items()}
    if state and all(torch.is_tensor(x) or x is None for x in state):
        return [split_envs(x, envs) for x in state]
    return state[envs]


def read_run_dir(run_dir: Path, args: Args) -> dict | None:
    """Rank 0's verdict: the newest usable checkpoint (with its "path" and every rank's part in "ranks"),
    None for a fresh run, or ArgError."""
    restarts = ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT")  # torchrun restarted, SLURM requeued
    if not (args.resume or any(int(os.environ.get(k) or 0) > 0 for k in restarts)):
        if (run_dir / "progress.csv").exists() or (run_dir / "checkpoints").exists():
            raise ArgError(
                f"{run_dir} already holds a run: continue it with --resume, or choose another --run-name"
            )
        return None
    for path in sorted((run_dir / "checkpoints").glob("update_*.pt"), reverse=True):
        try:
            ckpt = load_checkpoint(path, CHECKPOINT_KEYS)
        except ArgError as e:  # truncated or corrupt: the one before it
            print(f"warning: {e}; falling back to the previous checkpoint", file=sys.stderr)
            continue
        for k, v in asdict(args).items():
            if k not in RESUME_MAY_CHANGE and ckpt["args"].get(k) != v:
                raise ArgError(
                    f"{path} was written with {k}={ckpt['args'].get(k)}; resume with the same value"
                )
        return {**ckpt, "path": str(path)}
    if args.resume:
        raise ArgError(f"--resume: no usable checkpoint in {run_dir / 'checkpoints'}")
    return None


def load_checkpoint(path: Path, keys: tuple[str, ...] = MODEL_KEYS) -> dict:
    """Load a checkpoint, or fail with one line that names the file: unreadable, or lacking one of `keys`."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ArgError(
            f"cannot load checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from None
    missing = [k for k in keys if k not in ckpt] if isinstance(ckpt, dict) else ["everything: not a dict"]
    if missing:
        raise ArgError(f"cannot load checkpoint {path}: it lacks {', '.join(missing)}")
    return ckpt


def atomic_save(obj, path: Path) -> None:
    """torch.save (text: write) to a temporary name, then rename: readers see the old file or the new."""
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.write_text(obj) if isinstance(obj, str) else torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.is_file():  # the write failed (disk full) or was interrupted (SIGTERM)
            tmp.unlink()


def to_cpu(x):
    """A copy of nested dicts and lists of tensors, every tensor on the CPU."""
    if isinstance(x, dict):
        return {k: to_cpu(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(to_cpu(v) for v in x)
    return x.cpu() if torch.is_tensor(x) else x


# == Evaluation: episodes in envs of their own, in-process (rank 0) or in a separate process ==
EVAL_SEED = 1_000_003  # evaluation envs are seeded with seed + EVAL_SEED, apart from every training env
MAX_VIDEO_FRAMES = 1000  # a GIF holds at most this many steps of an episode


@torch.inference_mode()
def evaluate(
    policy, args: Args, episodes: int, *, device="cpu", show=None, frames=None, limit=math.inf
) -> dict:
    """Metrics of `episodes` games of policy(env, obs) ended within `limit` s; show renders, frames keeps."""
    deadline = time.monotonic() + limit
    env = Env(episodes, device, args.seed + EVAL_SEED, 0, args)
    obs, finished, timed_out = env.reset(), torch.zeros(episodes, dtype=torch.bool, device=device), False
    totals = {k: torch.zeros(episodes, device=device) for k in EPISODE_METRICS}
    if frames is not None:
        frames.append(draw(env, 0))
    for _ in range(env.max_episode_steps):
        obs, _, done, info = env.step(policy(env, obs))
        if show:
            show(render(env, 0))
        if frames is not None and not finished[0] and len(frames) < MAX_VIDEO_FRAMES:
            frames.append(draw(env, 0))  # a host copy per step: evaluation only, and only when asked
        ended = info.get("game_over", done)
        for k, v in totals.items():
            v.copy_(torch.where(ended & ~finished, info[k].float(), v))
        finished |= ended
        timed_out = time.monotonic() > deadline or stop_request["signal"]  # a stop signal cuts it short too
        if finished.all() or (show and finished[0]) or timed_out:
            break
    n = int(finished.sum())
    if n < episodes and not show:
        stop = "by a signal" if stop_request["signal"] else f"at its time limit ({limit:g} s)"
        why = f"stopped {stop}" if timed_out else f"ran {env.max_episode_steps} steps"
        print(f"warning: the evaluation {why}: {n} of {episodes} episodes ended", file=sys.stderr)
    return {f"eval/{k}": (v.sum() / n).item() for k, v in totals.items()} if n else {}


def save_gif(frames: list, path: Path, fps: float = 15.0) -> None:
    """Frames (uint8 [H, W, 3]) as a GIF >= 240 pixels across, written atomically (Pillow imported here)."""
    from PIL import Image

    scale = max(1, -(-240 // frames[0].shape[1]))
    images = [
        Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=1000 / fps, loop=0)
    os.replace(tmp, path)


def greedy(agent: nn.Module):
    """policy(env, obs) of the agent's greedy actions, its memory carried on (evaluate counts first games)."""
    memory, started = None, False

    def policy(env, obs: torch.Tensor) -> torch.Tensor:
        nonlocal memory, started
        if not started:
            memory, started = agent.initial_memory(env.num_envs, obs.device), True
        action, *_, memory = agent(obs, memory, torch.zeros(env.num_envs, device=obs.device), greedy=True)
        return action

    return policy


def play(args: Args) -> int:
    """--eval-checkpoint (the policy rebuilt from the file alone, in one process) or --baseline NAME."""
    if args.baseline:
        train_args, name, policy = (
            args,
            args.baseline,
            BASELINES[args.baseline](torch.Generator().manual_seed(1)),
        )
    else:
        ckpt = load_checkpoint(Path(args.eval_checkpoint))
        saved = {
            k: v for k, v in ckpt["args"].items() if k in Args.__dataclass_fields__
        }  # an older file's fields too
        train_args, name = Args(**{**saved, "seed": args.seed}), "greedy"

        agent = Agent(tuple(ckpt["obs_shape"]), ckpt["n_actions"], train_args)
        agent.load_state_dict(ckpt["model"])
        policy = greedy(agent.eval())
    show = lambda frame: print("\033[H\033[J" + frame, flush=True) or time.sleep(1.0 / args.render_fps)
    episodes, frames = 1 if args.render else args.eval_episodes, [] if args.capture_video else None
    stats = evaluate(policy, train_args, episodes, show=show if args.render else None, frames=frames)
    if frames:  # beside the checkpoint (an async evaluation: beside its JSON; a baseline: here)
        video = Path(args.eval_json or args.eval_checkpoint or f"baseline_{name}").with_suffix(".gif")
        save_gif(frames, video)
        print(f"video: {video}")
    (first, *rest), words = EPISODE_METRICS, lambda k: f"{k.replace('_', ' ')}"
    others = ", ".join(f"{words(k)} {stats['eval/' + k]:.2f}" for k in rest)  # the first: the headline
    print(f"{episodes} {name} episodes: {words(first)} per episode {stats['eval/' + first]:.2f} ({others})")
    if args.eval_json:  # an async evaluation: rank 0 reads this file once this process has ended
        atomic_save(json.dumps(stats), Path(args.eval_json))
    return 0


def start_async_eval(agent: nn.Module, meta: dict, run_dir: Path, update: int, step: int, args: Args) -> dict:
    """Evaluate a snapshot of the policy in a separate process (its log in run_dir/eval/)."""
    snapshot, out = (
        run_dir / f"eval/policy_{update:08d}.pt",
        run_dir / f"eval/update_{update:08d}_step_{step}.json",
    )
    atomic_save({"model": agent.state_dict(), **meta}, snapshot)
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher and not k.startswith("TORCHELASTIC")}
    flags = [f"--eval-checkpoint={snapshot}", f"--eval-json={out}", f"--eval-episodes={args.eval_episodes}"]
    flags += [f"--seed={args.seed}", *(["--capture-video"] if args.capture_video else [])]
    with open(out.with_suffix(".log"), "w") as f:  # the child keeps its own handle
        cmd = [sys.executable, os.path.abspath(__file__), *flags]
        proc = subprocess.Popen(cmd, env={**env, "OMP_NUM_THREADS": "1"}, stdout=f, stderr=subprocess.STDOUT)
    return {"proc": proc, "json": out, "step": step, "video": run_dir / "videos" / f"update_{update:08d}.gif"}


def collect_async_evals(evals: list[dict], writer, wait: float = 0.0) -> dict[str, float]:
    """The ended evaluations into TensorBoard at their step, the newest returned; `wait` s, then kill."""
    deadline, latest = time.monotonic() + wait, {}
    for ev in list(evals):
        if wait:  # then kill (a no-op on a process that has ended)
            with contextlib.suppress(subprocess.TimeoutExpired):
                ev["proc"].wait(timeout=max(0.0, deadline - time.monotonic()))
            ev["proc"].kill()
            ev["proc"].wait()
        if ev["proc"].poll() is None:
            continue
        evals.remove(ev)
        try:  # a failed, killed or unreadable evaluation is reported and dropped: it never stops the training
            if ev["proc"].returncode != 0:
                raise RuntimeError(f"exit code {ev['proc'].returncode}")
            stats = json.loads(ev["json"].read_text())
        except (OSError, ValueError, RuntimeError) as e:
            log = ev["json"].with_suffix(".log")
            print(f"warning: the evaluation at step {ev['step']} failed ({e}); see {log}", file=sys.stderr)
            continue
        for k, v in stats.items():
            writer.add_scalar(k, v, ev["step"])
        if ev["json"].with_suffix(".gif").exists():  # --capture-video: into videos/ with the others
            ev["video"].parent.mkdir(exist_ok=True)
            os.replace(ev["json"].with_suffix(".gif"), ev["video"])
        latest = stats
    return latest


def bench_env(env, steps: int) -> float:
    """Env-steps per second of random valid actions (the `random` baseline's, drawn first): the env alone."""
    obs = env.reset()
    random_policy = BASELINES["random"](torch.Generator().manual_seed(0))
    actions = [random_policy(env, obs).to(env.device) for _ in range(16)]
    for t in range(-10, steps):  # 10 steps of warm-up first
        if t == 0:
            start = clock(env.device)
        env.step(actions[t % 16])
    return env.num_envs * steps / (clock(env.device) - start)


# == Logging on rank 0: TensorBoard, progress.csv (and wandb with --track), the console table ==
# == Logging on rank 0: TensorBoard, progress.csv (and wandb with --track), the console table ==
class RunLog:
    """Rank 0's outputs in runs/<run_name>/: config.json, TensorBoard, progress.csv (its columns set by the
    first row: every row has the same keys, episode and evaluation metrics aside), wandb with --track."""

    def __init__(
        self, run_dir: Path, config: dict, args: Args, last_update: int, start_step: int, started: float
    ):
        self.wandb, self.args, self.last_print, self.shown = None, args, 0.0, {}
        self.started, self.start_step = started, start_step  # this session's pace gives the time left
        if args.track:  # imported only when asked for; before SummaryWriter, whose scalars it mirrors
            import wandb

            id_file = run_dir / "wandb_id"  # a resumed run continues its wandb run
            if last_update == 0 or not id_file.exists():
                atomic_save(os.urandom(4).hex(), id_file)
            run = {"project": args.wandb_project_name, "name": args.run_name, "id": id_file.read_text()}
            self.wandb = wandb.init(**run, resume="allow", config=config, sync_tensorboard=True)
        atomic_save(json.dumps(config, indent=2), run_dir / "config.json")
        self.writer = SummaryWriter(str(run_dir), purge_step=start_step + 1 if start_step else None)
        table = "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in config.items())
        self.writer.add_text("hyperparameters", table)
        self.rows = []  # progress.csv holds updates 1..last_update: a resume drops rows after its checkpoint
        if last_update > 0 and (run_dir / "progress.csv").exists():
            with open(run_dir / "progress.csv", newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["update"]) <= last_update]
        self.path, self.csv_file, self.csv = run_dir / "progress.csv", None, None

    def write(self, row: dict, per_rank_sps: list[float], last: bool) -> None:
        """One update's row into TensorBoard and progress.csv; the console table now and then, and last."""
        for k, v in row.items():
            if "/" in k:
                self.writer.add_scalar(k, v, row["global_step"])
        if self.csv is None:  # the first row of this session: the columns, then the rows kept from the last
            games = [*EPISODE_METRICS.values(), "charts/episodes"]
            columns = [
                "update",
                "global_step",
                "charts/SPS",
                *games,
                *row,
                *(f"eval/{k}" for k in EPISODE_METRICS),
            ]
            self.csv_file = open(self.path, "w", newline="")  # noqa: SIM115  (open for the whole run)
            self.csv = csv.DictWriter(
                self.csv_file, fieldnames=list(dict.fromkeys(columns)), extrasaction="ignore"
            )
            self.csv.writeheader()
            self.csv.writerows(self.rows)
        self.csv.writerow(row)
        self.csv_file.flush()
        self.shown.update(row)  # the table shows each metric's last known value
        if not last and time.time() - self.last_print < self.args.print_interval:
            return
        self.last_print = time.time()
        self.print_table(per_rank_sps)

    def print_table(self, per_rank_sps: list[float]) -> None:
        from rich.console import Console
        from rich.table import Table

        r, total = self.shown, self.args.total_timesteps
        elapsed = time.perf_counter() - self.started
        left = elapsed * (total - r["global_step"]) / max(r["global_step"] - self.start_step, 1)
        table = Table(title=f"update {r['update']}", show_header=False)
        table.add_row("steps", f"{r['global_step']:,} / {total:,} ({100 * r['global_step'] / total:.1f}%)")
        table.add_row("time elapsed / left", f"{elapsed / 60:.1f} min / {left / 60:.1f} min")
        sps = f"{r['charts/SPS']:,.0f} / " + ", ".join(f"{s:,.0f}" for s in per_rank_sps)
        table.add_row("SPS (global / per rank)", sps)
        for tag in EPISODE_METRICS.values():
            table.add_row(tag, f"{r[tag]:.2f}" if tag in r else "no episode has ended yet")
        for title, prefixes in (
            ("losses", ("losses/",)),
            ("schedule", ("charts/learning_rate", "schedule/")),
        ):
            shown = [f"{k.split('/')[-1]} {v:.4g}" for k, v in r.items() if k.startswith(prefixes)]
            table.add_row(title, ", ".join(shown))
        table.add_row("time rollout / update (s)", f"{r['time/rollout_s']:.2f} / {r['time/update_s']:.2f}")
        Console().print(table)

    def close(self, failed: bool) -> None:
        self.writer.close()  # a stop signal cannot cut this short (it only sets stop_request)
        if self.csv_file is not None:
            self.csv_file.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code=1 if failed else 0)


# == Main: the other modes, DDP set-up and teardown ==
def find_unused_aliases(argv: list[str]) -> list[str]:
    """--find-unused alone means --find-unused=on, --no-find-unused --find-unused=off."""
    alone = lambda i: argv[i] == "--find-unused" and (i + 1 == len(argv) or argv[i + 1].startswith("-"))
    off = {"--no-find-unused": "--find-unused=off"}
    return ["--find-unused=on" if alone(i) else off.get(a, a) for i, a in enumerate(argv)]


def main() -> int:
    args = tyro.cli(Args, args=find_unused_aliases(sys.argv[1:]))
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    use_cuda = args.cuda and torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    cpus = cpu_share(allowed_cpus(), local_rank, local_world)
    if "OMP_NUM_THREADS" not in os.environ:  # torch threads: one local rank's share of the CPUs
        torch.set_num_threads(len(cpus))
    one_process_modes = args.eval_checkpoint or args.baseline or args.bench_env
    try:  # every check that needs no agreed size, before anything heavy (the sizes: once agreed, in Run)
        validate(replace(args, num_envs=args.num_envs or 1) if one_process_modes else args, world_size)
        gpus = torch.cuda.device_count()
        if use_cuda and local_world > gpus:
            raise ArgError(
                f"{local_world} processes on this node, {gpus} GPU(s): --nproc-per-node={gpus}, or --no-cuda"
            )
        if args.eval_checkpoint or args.baseline:
            return play(args)
    except ArgError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.bench_env:
        num_envs = args.num_envs or device_num_envs(device, local_world)
        sps = bench_env(Env(num_envs, device, args.seed, 0, args), steps=500)
        print(f"{num_envs} envs on {device}, {torch.get_num_threads()} threads: {sps:,.0f} steps/s")
        return 0

    # DDP set-up: every rank reaches every collective below in the same order
    if use_cuda:
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=args.dist_timeout)
    for sig in STOP_SIGNALS:  # from here a stop signal is a request, served at the end of an update
        signal.signal(sig, lambda signum, _frame: stop_request.update(signal=signum))
    store, backend = rendezvous_store(rank, world_size, timeout), "nccl" if use_cuda else "gloo"
    device_id = device if use_cuda else None
    dist.init_process_group(
        backend, store=store, rank=rank, world_size=world_size, timeout=timeout, device_id=device_id
    )
    try:  # every exit path below leaves through `finally`, which shuts the process group down
        if args.pin_cpus and not use_cuda and hasattr(os, "sched_setaffinity") and cpus != allowed_cpus():
            os.sched_setaffinity(0, cpus)  # after init_process_group: this thread, not gloo's (scaling.md)
        else:
            cpus = allowed_cpus()
        with Run(args, device, cpus, local_world) as run:
            train(args, run)
            code = run.finish()
        dist.barrier()  # a successful run ends together
        return code
    except (ArgError, FloatingPointError, StopEveryRank) as e:  # raised on every rank alike: one verdict
        failure = not isinstance(e, ArgError)  # bad input (exit 2) or a failure at run time (exit 1)
        print(f"error: {e}{': training stopped on every rank' if failure else ''}", file=sys.stderr)
        return 1 if failure else 2
    except KeyboardInterrupt:  # Ctrl-C: leave through `finally`, which shuts the process group down
        print(f"rank {rank}: interrupted; destroying the process group", file=sys.stderr)
        return 130
    finally:
        gc.collect()  # free DDP's reducer while the process group exists (docs/unused-parameters.md)
        dist.destroy_process_group()


def rendezvous_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """torchrun's store (MASTER_ADDR:MASTER_PORT), a prefix per restart; or an in-process one for `python`."""
    if "MASTER_ADDR" not in os.environ:
        return dist.HashStore()
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun hosts it: all clients
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    store = dist.TCPStore(addr, port, world_size, is_master=rank == 0 and not agent_store, timeout=timeout)
    return dist.PrefixStore(f"restart{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


if __name__ == "__main__":
    sys.exit(main())
