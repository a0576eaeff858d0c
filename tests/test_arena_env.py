"""The vectorized Arena env: objects, cooldowns, caps, rewards, observation, seeding, resume, teacher."""

import pytest
import torch
from crafted import arena_room

import ppo_ddp as arena

NOOP, UP, RIGHT, DOWN, LEFT = range(5)
MINE, GENERATOR, ALTAR = arena.ArenaEnv.MINE, arena.ArenaEnv.GENERATOR, arena.ArenaEnv.ALTAR
MINE_PLANE, GENERATOR_PLANE, ALTAR_PLANE, READY_PLANE, WALL_PLANE = range(5)


def Env(num_envs: int, device="cpu", seed: int = 1, env_id_offset: int = 0, **settings):  # noqa: N802
    """An ArenaEnv as the script builds one: its settings in an Args."""
    return arena.ArenaEnv(num_envs, device, seed, env_id_offset, arena.Args(**settings))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors here are small: extra threads only cost, and stall badly when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def crafted(agent, objects=(), inventory=(0, 0, 0), **kwargs) -> Env:
    """One room with the agent at `agent` and only `objects`: (kind, row, col, steps until ready)."""
    env = Env(1, **kwargs)
    arena_room(env, 0, agent, objects, inventory)
    return env


def step(env: Env, *actions: int):
    return env.step(torch.tensor(actions))


def where(env: Env, i: int = 0) -> tuple[int, int]:
    """The agent's (row, col) in room coordinates."""
    row, col = divmod(int(env.pos[i]), env.side)
    return row - env._pad, col - env._pad


def ready_at(env: Env, row: int, col: int) -> int:
    """The episode step from which the object at (row, col) of room 0 is ready."""
    return int(env.obj_ready_at[0][env.obj_pos[0] == env.cell_index(row, col)])


def grid(env: Env, obs: torch.Tensor, i: int = 0) -> torch.Tensor:
    return obs[i, :-3].view(env.grid_shape)


def expected_obs(env: Env, i: int) -> torch.Tensor:
    """Room i's observation built cell by cell, the slow and obvious way."""
    r, (row, col) = env.window // 2, where(env, i)
    ready = {
        int(p): int(t) <= int(env.steps[i]) for p, t in zip(env.obj_pos[i], env.obj_ready_at[i], strict=True)
    }
    planes = torch.zeros(5, env.window, env.window, dtype=torch.uint8)
    for dr in range(-r, r + 1):
        for dc in range(-r, r + 1):
            inside = 0 <= row + dr < env.room_size and 0 <= col + dc < env.room_size
            cell = env.cell_index(row + dr, col + dc) if inside else None
            code = int(env.cell[i, cell]) if inside else arena.ArenaEnv.WALL
            for plane, kind in ((0, MINE), (1, GENERATOR), (2, ALTAR), (4, arena.ArenaEnv.WALL)):
                planes[plane, r + dr, r + dc] = code == kind
            planes[READY_PLANE, r + dr, r + dc] = code >= MINE and ready[cell]
    return torch.cat([planes.flatten(), env.inv[i].clamp(max=255).to(torch.uint8)])


def check_rooms(env: Env, obs: torch.Tensor, rooms=range(4)) -> None:
    """Invariants of every room, and the observation of a few."""
    for kind in (MINE, GENERATOR, ALTAR):
        assert ((env.cell == kind).sum(1) == (env._kinds == kind).sum()).all()
    assert torch.equal(env.cell.gather(1, env.obj_pos), env._kinds.expand_as(env.obj_pos))
    assert (env.cell.gather(1, env.pos[:, None]) == arena.ArenaEnv.EMPTY).all(), (
        "the agent stands on an empty cell"
    )
    assert (env.inv >= 0).all() and (env.inv <= env._inv_max).all()
    assert obs.shape == (env.num_envs, *env.obs_shape) and obs.dtype == torch.uint8
    for i in rooms:
        assert torch.equal(obs[i], expected_obs(env, i))


def test_mine_gives_ore_then_cools_down():
    env = crafted((2, 2), [(MINE, 2, 3, 0)], ore_max=2, mine_cooldown=3)
    obs, reward, done, _ = step(env, RIGHT)
    assert where(env) == (2, 2) and env.inv[0].tolist() == [1, 0, 0]  # took ore, stayed in place
    assert reward.item() == pytest.approx(0.1) and not done.item()
    r = env.window // 2
    assert grid(env, obs)[MINE_PLANE, r, r + 1] == 1 and grid(env, obs)[READY_PLANE, r, r + 1] == 0
    for _ in range(3):  # cooling down: bumping it gives nothing
        obs, reward, _, _ = step(env, RIGHT)
        assert reward.item() == 0 and env.inv[0, 0] == 1
    assert grid(env, obs)[READY_PLANE, r, r + 1] == 1  # ready again after its 3 steps
    _, reward, _, _ = step(env, RIGHT)
    assert env.inv[0, 0] == 2 and reward.item() == pytest.approx(0.1)


def test_generator_needs_ore_and_makes_a_battery():
    env = crafted((4, 4), [(GENERATOR, 5, 4, 0)], generator_cooldown=2)
    _, reward, _, _ = step(env, DOWN)  # no ore: nothing happens, and the generator stays ready
    assert reward.item() == 0 and env.inv[0].tolist() == [0, 0, 0] and ready_at(env, 5, 4) == 0
    env.inv[0, 0] = 1
    _, reward, _, _ = step(env, DOWN)
    assert env.inv[0].tolist() == [0, 1, 0] and reward.item() == pytest.approx(0.8) and where(env) == (4, 4)
    assert ready_at(env, 5, 4) == 1 + 1 + 2  # used at step 1: refuses steps 2 and 3


def test_altar_needs_a_battery_and_makes_a_heart():
    env = crafted((0, 0), [(ALTAR, 0, 1, 0)], inventory=(1, 0, 0))
    _, reward, _, _ = step(env, RIGHT)
    assert reward.item() == 0 and env.inv[0].tolist() == [1, 0, 0]
    env.inv[0, 1] = 1
    _, reward, _, _ = step(env, RIGHT)
    assert env.inv[0].tolist() == [1, 0, 1] and reward.item() == 1.0
    _, reward, _, _ = step(env, RIGHT)
    assert reward.item() == 0  # cooling down (altar_cooldown > 0 by default)


def test_cooling_objects_refuse_and_waiting_works():
    env = crafted((3, 3), [(MINE, 2, 3, 2)])
    assert step(env, UP)[1].item() == 0 and step(env, UP)[1].item() == 0
    assert step(env, UP)[1].item() > 0 and env.inv[0, 0] == 1  # ready from step 2 on


def test_inventory_caps():
    objects = [(MINE, 1, 0, 0), (GENERATOR, 1, 2, 0), (ALTAR, 0, 1, 0)]
    env = crafted((1, 1), objects, inventory=(2, 0, 0), ore_max=2, mine_cooldown=0)
    # ore full, unused
    assert step(env, LEFT)[1].item() == 0 and env.inv[0, 0] == 2 and ready_at(env, 1, 0) == 0
    env = crafted((1, 1), objects, inventory=(1, 3, 0), battery_max=3)
    assert step(env, RIGHT)[1].item() == 0 and env.inv[0].tolist() == [1, 3, 0]  # batteries full
    env = crafted((1, 1), objects, inventory=(0, 1, 1000))  # hearts uncapped by default
    assert step(env, UP)[1].item() == 1.0 and env.inv[0].tolist() == [0, 0, 1001]
    env = crafted((1, 1), objects, inventory=(0, 1, 2), heart_max=2)
    assert step(env, UP)[1].item() == 0 and env.inv[0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("shaping", [True, False])
def test_rewards_and_per_episode_shaping_caps(shaping):
    # mine left, generator right, altar above, all without cooldown: one cycle is LEFT, RIGHT, UP
    objects = [(MINE, 1, 0, 0), (GENERATOR, 1, 2, 0), (ALTAR, 0, 1, 0)]
    caps = {"ore_reward_max": 3, "battery_reward_max": 2, "reward_shaping": shaping}
    cooldowns = {"mine_cooldown": 0, "generator_cooldown": 0, "altar_cooldown": 0}
    env = crafted((1, 1), objects, episode_length=12, **caps, **cooldowns)
    rewards = []
    for action in [LEFT, RIGHT, UP] * 4:
        _, reward, done, info = step(env, action)
        rewards.append(reward.item())
    ore, battery = (0.1, 0.8) if shaping else (0.0, 0.0)
    # 3 ores, 2 batteries paid
    expected = [ore, battery, 1.0, ore, battery, 1.0, ore, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert rewards == pytest.approx(expected)
    assert done.item() and info["episode_return"].item() == pytest.approx(sum(expected))
    counters = ("hearts", "ore_collected", "batteries_made", "episode_length")
    assert [info[k].item() for k in counters] == [4, 4, 4, 12]


def test_walls_block_and_empty_cells_move():
    env = crafted((0, 0), room_size=3, num_mines=1, num_generators=1, num_altars=1)
    for action in (UP, LEFT, NOOP):
        step(env, action)
        assert where(env) == (0, 0)
    for action, cell in ((RIGHT, (0, 1)), (RIGHT, (0, 2)), (RIGHT, (0, 2)), (DOWN, (1, 2)), (DOWN, (2, 2))):
        step(env, action)
        assert where(env) == cell
    step(env, DOWN)
    assert where(env) == (2, 2)


def test_auto_reset_at_episode_length():
    env = crafted((1, 1), [(ALTAR, 0, 1, 0)], inventory=(1, 1, 0), episode_length=5)
    env.steps[0] = 4
    obs, reward, done, info = step(env, UP)
    assert reward.item() == 1.0 and done.item()
    assert info["episode_length"].item() == 5 and info["hearts"].item() == 1
    assert env.steps.item() == 0 and env.inv[0].tolist() == [0, 0, 0] and env.made[0].tolist() == [0, 0, 0]
    assert obs[0, -3:].tolist() == [0, 0, 0] and (env.obj_ready_at == 0).all()
    check_rooms(env, obs, rooms=[0])  # a full new layout
    assert not step(env, NOOP)[2].item()


def test_observation_is_egocentric():
    objects = [(MINE, 3, 7, 0), (GENERATOR, 6, 4, 5), (ALTAR, 5, 6, 0)]
    env = crafted((5, 5), objects, inventory=(1, 0, 7))
    obs = env._obs()
    planes, r = grid(env, obs), env.window // 2
    assert obs.shape == (1, 5 * 11 * 11 + 3) and env.grid_shape == (5, 11, 11)
    assert planes[MINE_PLANE, r - 2, r + 2] == 1 and planes[GENERATOR_PLANE, r + 1, r - 1] == 1
    assert planes[ALTAR_PLANE, r, r + 1] == 1 and planes[:3].sum() == 3
    assert planes[READY_PLANE].nonzero().tolist() == [[r - 2, r + 2], [r, r + 1]]  # the generator cools down
    assert planes[WALL_PLANE].sum() == 0  # the window of the room's centre is exactly the room
    assert obs[0, -3:].tolist() == [1, 0, 7]
    step(env, UP)
    planes = grid(env, env._obs())
    assert where(env) == (4, 5) and planes[MINE_PLANE, r - 1, r + 2] == 1
    assert planes[WALL_PLANE, 0].all() and planes[WALL_PLANE].sum() == 11  # the wall above the room


def test_small_window_near_a_corner():
    env = crafted((0, 1), [(MINE, 1, 1, 0)], obs_radius=1)
    planes = grid(env, env._obs())
    assert planes.shape == (5, 3, 3) and planes[MINE_PLANE].tolist() == [[0, 0, 0], [0, 0, 0], [0, 1, 0]]
    assert planes[WALL_PLANE].tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 0]]


def test_random_play_keeps_every_invariant():
    env = Env(128, seed=3, episode_length=25, obs_radius=2, mine_cooldown=3, generator_cooldown=2)
    obs = env.reset()
    check_rooms(env, obs)
    gen = torch.Generator().manual_seed(0)
    total = torch.zeros(128)
    for _ in range(60):
        obs, reward, done, info = env.step(torch.randint(0, 5, (128,), generator=gen))
        check_rooms(env, obs, rooms=[0, 1])
        total += reward
        assert torch.allclose(info["episode_return"][done], total[done])
        total[done] = 0
    assert (env.steps == 10).all() and env.made.sum() > 0


def test_layouts_are_uniform_and_distinct():
    env = Env(2000, seed=5, room_size=5, num_mines=2, num_generators=1, num_altars=1)
    agent_cells = torch.bincount(env.pos, minlength=env.side**2)[env._interior]
    assert agent_cells.min() > 40 and agent_cells.max() < 120  # about 2000 / 25 = 80 each
    assert len({tuple(row.tolist()) for row in env.cell}) > 1900


def test_same_seed_same_run_and_reset_replays():
    def run(env):
        gen = torch.Generator().manual_seed(1)
        out = [env.reset()]
        for _ in range(40):
            out.append(env.step(torch.randint(0, 5, (env.num_envs,), generator=gen))[0])
        return torch.stack(out)

    a, b = Env(32, seed=7, episode_length=15), Env(32, seed=7, episode_length=15)
    first = run(a)
    assert torch.equal(first, run(b)) and torch.equal(first, run(a))
    assert not torch.equal(first, run(Env(32, seed=8, episode_length=15)))


def test_rank_streams_are_disjoint_and_match_one_big_env():
    n, steps = 16, 50
    gen = torch.Generator().manual_seed(2)
    actions = torch.randint(0, 5, (steps, 2 * n), generator=gen)
    kw = {"seed": 4, "episode_length": 10}
    whole, rank0, rank1 = Env(2 * n, **kw), Env(n, **kw), Env(n, env_id_offset=n, **kw)
    obs = [(whole.reset(), rank0.reset(), rank1.reset())]
    for a in actions:
        obs.append((whole.step(a)[0], rank0.step(a[:n])[0], rank1.step(a[n:])[0]))
    for w, r0, r1 in obs:
        assert torch.equal(w[:n], r0) and torch.equal(w[n:], r1)
    layouts = [tuple(row.tolist()) for row in torch.cat([rank0.cell, rank1.cell])]
    assert len(set(layouts)) == 2 * n  # no two rooms share a stream


def test_fixed_shape_path_matches_the_cpu_path():
    """Off CPU every update runs over all rooms, blended by mask; it must give the same game."""
    kw = {
        "seed": 9,
        "episode_length": 7,
        "room_size": 6,
        "num_mines": 3,
        "num_generators": 2,
        "num_altars": 1,
    }
    subset, fixed = Env(24, **kw), Env(24, **kw)
    fixed.fixed_shapes = True
    fixed.reset()
    gen = torch.Generator().manual_seed(3)
    for _ in range(30):
        a = torch.randint(0, 5, (24,), generator=gen)
        out_s, out_f = subset.step(a), fixed.step(a)
        assert all(torch.equal(x, y) for x, y in zip(out_s[:3], out_f[:3], strict=True))
        assert all(torch.equal(out_s[3][k], out_f[3][k]) for k in out_s[3])
    for name, value in subset.state_dict().items():
        assert torch.equal(value, fixed.state_dict()[name]), name


def test_state_dict_round_trip_continues_identically():
    gen = torch.Generator().manual_seed(4)
    actions = torch.randint(0, 5, (60, 16), generator=gen)
    env = Env(16, seed=11, episode_length=25)
    for a in actions[:30]:
        env.step(a)
    saved = env.state_dict()
    expected = [env.step(a) for a in actions[30:]]
    resumed = Env(16, seed=99, episode_length=25)  # a different seed: the state dict carries the streams
    resumed.load_state_dict(saved)
    for a, (obs, reward, done, info) in zip(actions[30:], expected, strict=True):
        obs2, reward2, done2, info2 = resumed.step(a)
        assert torch.equal(obs, obs2) and torch.equal(reward, reward2) and torch.equal(done, done2)
        assert all(torch.equal(info[k], info2[k]) for k in info)
    with pytest.raises(ValueError):
        Env(8).load_state_dict(saved)


def test_splitmix64_matches_the_reference():
    def reference(z):
        z = (z + 0x9E3779B97F4A7C15) % 2**64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
        return z ^ (z >> 31)

    inputs = [0, 1, 12345, 2**63 - 1, 2**63, 2**64 - 1, 0xDEADBEEFCAFEBABE]
    signed = lambda u: u - 2**64 if u >= 2**63 else u
    z = torch.tensor([signed((u + 0x9E3779B97F4A7C15) % 2**64) for u in inputs])
    assert arena._mix64(z).tolist() == [signed(reference(u)) for u in inputs]


def test_teacher_walks_around_obstacles_and_waits_for_cooldowns():
    # a wall of generators between the agent and the only mine, which is cooling down
    objects = [(GENERATOR, 1, c, 0) for c in range(4)] + [(MINE, 0, 0, 9)]
    env = crafted((2, 0), objects, room_size=5, num_generators=4)
    for _ in range(20):
        step(env, int(arena.teacher_actions(env)))
    # round by the gap at the right, ore from the mine once it is ready, a battery from the generator below,
    # then waiting by the mine (no altar in this room)
    assert env.made[0].tolist() == [1, 1, 0] and env.inv[0].tolist() == [0, 1, 0] and where(env) == (0, 1)


def test_teacher_far_ahead_of_random_play():
    n = 300
    env, teacher = Env(n, seed=1, episode_length=128), Env(n, seed=1, episode_length=128)
    gen = torch.Generator().manual_seed(0)
    for _ in range(128):
        _, _, _, random_info = env.step(torch.randint(0, 5, (n,), generator=gen))
        _, _, done, teacher_info = teacher.step(arena.teacher_actions(teacher))
    assert done.all()
    random_hearts = random_info["hearts"].float().mean()
    teacher_hearts = teacher_info["hearts"].float().mean()
    assert teacher_hearts > 5 and teacher_hearts > 10 * random_hearts


def test_render_room():
    objects = [(MINE, 0, 1, 0), (GENERATOR, 2, 2, 3), (ALTAR, 1, 0, 0)]
    env = crafted(
        (0, 0), objects, inventory=(1, 0, 2), room_size=3, num_mines=1, num_generators=1, num_altars=1
    )
    lines = arena.render(env, 0).splitlines()
    assert lines[0] == lines[4] == "# # # # #"
    assert lines[1:4] == ["# @ M . #", "# A . . #", "# . . g #"]
    assert lines[5].startswith("step 0/") and "ore 1/1" in lines[5] and "hearts 2" in lines[5]


def test_bench_env_and_bad_arguments():
    assert arena.bench_env(Env(8), steps=5) > 0
    for bad in ({"room_size": 2}, {"ore_max": 0}, {"mine_cooldown": -1}, {"episode_length": 0}):
        with pytest.raises(arena.ArgError):
            arena.check_args(arena.Args(num_envs=8, **bad), 1)
