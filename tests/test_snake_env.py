"""The vectorized Snake environment: rules, auto-reset, apple placement, seeding, resume and rendering."""

import pytest
import torch
from crafted import snake_board

import ppo_ddp_snake as snake

UP, RIGHT, DOWN, LEFT = snake.SnakeEnv.UP, snake.SnakeEnv.RIGHT, snake.SnakeEnv.DOWN, snake.SnakeEnv.LEFT


def Env(num_envs: int, size: int = 10, device="cpu", seed: int = 1, env_id_offset: int = 0, **settings):  # noqa: N802
    """A SnakeEnv as the script builds one: its settings in an Args."""
    return snake.SnakeEnv(num_envs, device, seed, env_id_offset, snake.Args(board_size=size, **settings))


MOVE = {UP: (-1, 0), RIGHT: (0, 1), DOWN: (1, 0), LEFT: (0, -1)}


def crafted(body, direction, apple, size=7, **kwargs) -> Env:
    """One board holding the given snake (cells from head to tail) and apple."""
    env = Env(1, size=size, **kwargs)
    snake_board(env, 0, body, direction, apple)
    return env


def step(env: Env, *actions: int):
    return env.step(torch.tensor(actions))


def head(env: Env, i: int = 0) -> tuple[int, int]:
    return divmod(int(env.head[i]), env.size)


def cells(env: Env, i: int = 0) -> list[tuple[int, int]]:
    """The snake's cells from head to tail."""
    life = env.life[i]
    order = life.argsort(descending=True)[: int((life > 0).sum())]
    return [divmod(int(c), env.size) for c in order]


def check_board(env: Env, obs: torch.Tensor) -> None:
    """Invariants of every board, and its observation."""
    n, area, life = env.num_envs, env.area, env.life.long()
    # the body holds each remaining life length, ..., 2, 1 (times unit) once; the head the longest
    ranks = torch.arange(area, 0, -1) - (area - env.length[:, None])
    assert torch.equal(life.sort(1, descending=True).values, ranks.clamp(min=0) * env.unit)
    assert torch.equal(life.gather(1, env.head[:, None]).squeeze(1), env.length * env.unit)
    assert (life.gather(1, env.apple[:, None]) == 0).all(), "apple on the snake"
    # cells in order of life, head to tail, are neighbours
    order = life.argsort(1, descending=True)
    hops = (order // env.size).diff(1).abs() + (order % env.size).diff(1).abs()
    assert ((hops == 1) | (torch.arange(1, area) >= env.length[:, None])).all()
    one_hot = lambda cell: torch.nn.functional.one_hot(cell, area) * 255
    expected = torch.stack([one_hot(env.head), life, one_hot(env.apple)], 1).view(n, *env.obs_shape)
    assert obs.dtype == torch.uint8 and torch.equal(obs.long(), expected)


@pytest.mark.parametrize("direction", [UP, RIGHT, DOWN, LEFT])
def test_moves_in_each_direction_and_reversing_keeps_straight(direction):
    dr, dc = MOVE[direction]
    body = [(3 - k * dr, 3 - k * dc) for k in range(3)]  # heading `direction`, head in the middle
    for action in (direction, (direction + 2) % 4):  # going on, and reversing into the neck
        env = crafted(body, direction, apple=(0, 0) if direction != UP else (6, 6))
        obs, reward, done, _ = step(env, action)
        assert head(env) == (3 + dr, 3 + dc)
        assert cells(env) == [(3 + dr, 3 + dc), *body[:2]]  # the tail cell is free again
        assert obs[0, 0, 3 + dr, 3 + dc] == 255 and obs[0, 1, 3 + dr, 3 + dc] == 3 * env.unit
        assert reward.item() == 0 and not done.item()


def test_turning():
    env = crafted([(3, 3), (4, 3), (5, 3)], UP, apple=(0, 0))
    step(env, LEFT)
    step(env, DOWN)
    assert cells(env) == [(4, 2), (3, 2), (3, 3)]
    assert env.direction.item() == DOWN


@pytest.mark.parametrize("rewards", [{}, {"reward_apple": 0.5, "reward_death": -2.0}])
def test_apple_grows_the_snake(rewards):
    env = crafted([(3, 3), (3, 2), (3, 1)], RIGHT, apple=(3, 4), **rewards)
    env.hunger[0] = 5
    obs, reward, done, _ = step(env, RIGHT)
    assert reward.item() == rewards.get("reward_apple", 1.0) and not done.item()
    assert cells(env) == [(3, 4), (3, 3), (3, 2), (3, 1)]  # the tail stayed: one longer
    assert env.length.item() == 4 and env.hunger.item() == 0
    check_board(env, obs)  # a new apple on a free cell


def test_death_by_wall():
    env = crafted([(0, 3), (1, 3), (2, 3), (3, 3)], UP, apple=(6, 6))
    env.steps[0] = 10
    obs, reward, done, info = step(env, UP)
    assert reward.item() == -1.0 and done.item()
    assert info["episode_return"].item() == 1 * 1.0 - 1.0  # one apple (length 4), then death
    assert info["episode_length"].item() == 11 and info["apples"].item() == 1
    assert info["snake_length"].item() == 4 and not info["won"].item() and not info["starved"].item()


def test_death_by_body():
    # a hook: turning down runs into the body cell (2, 3), which is not the tail
    env = crafted([(1, 3), (1, 4), (2, 4), (2, 3), (2, 2)], LEFT, apple=(6, 6))
    _, reward, done, info = step(env, DOWN)
    assert reward.item() == -1.0 and done.item() and info["snake_length"].item() == 5


def test_tail_moves_out_of_the_way():
    # a snake of 4 in a 2x2 square chases its tail: the head's target is the tail's current cell
    env = crafted([(0, 0), (0, 1), (1, 1), (1, 0)], LEFT, apple=(6, 6))
    for action in [DOWN, RIGHT, UP, LEFT] * 3:
        _, reward, done, _ = step(env, action)
        assert reward.item() == 0 and not done.item()
    assert cells(env) == [(0, 0), (0, 1), (1, 1), (1, 0)]


def test_the_cell_before_the_tail_is_still_a_collision():
    env = crafted([(0, 0), (0, 1), (1, 1), (1, 0), (2, 0)], LEFT, apple=(6, 6))
    _, reward, done, _ = step(env, DOWN)  # (1, 0) frees only after two steps
    assert done.item() and reward.item() == -1.0


def test_starvation():
    env = crafted([(0, 0), (0, 1), (1, 1), (1, 0)], LEFT, apple=(6, 6), max_steps_without_food=6)
    for t, action in enumerate([DOWN, RIGHT, UP, LEFT, DOWN, RIGHT]):
        _, reward, done, info = step(env, action)
        assert done.item() == (t == 5) and reward.item() == 0
    assert info["starved"].item() and info["episode_length"].item() == 6
    assert info["episode_return"].item() == info["apples"].item() == 1  # no death penalty


def test_default_starvation_limit_is_the_area():
    assert Env(1, size=6).max_hunger == 36 and Env(1, size=6, max_steps_without_food=7).max_hunger == 7


def test_win_on_a_full_board():
    # 3x3 board, a snake of 8 in a serpentine, the last free cell holds the apple
    body = [(2, 1), (2, 0), (1, 0), (1, 1), (1, 2), (0, 2), (0, 1), (0, 0)]
    env = crafted(body, RIGHT, apple=(2, 2), size=3)
    obs, reward, done, info = step(env, RIGHT)
    assert reward.item() == 1.0 and done.item() and info["won"].item()
    assert info["snake_length"].item() == 9 and info["apples"].item() == info["episode_return"].item() == 6
    assert env.length.item() == 3  # restarted
    check_board(env, obs)


def test_auto_reset_gives_a_fresh_episode():
    env = crafted([(0, 3), (1, 3), (2, 3), (3, 3), (4, 3)], UP, apple=(6, 6))
    env.hunger[0] = 3
    obs, _, done, _ = step(env, UP)
    assert done.item()
    assert env.length.item() == 3 and env.steps.item() == 0 and env.hunger.item() == 0
    snake_cells = cells(env)
    (r0, c0), (r1, c1), (r2, c2) = snake_cells
    assert abs(r0 - r1) + abs(c0 - c1) == 1 and (r0 - r1, c0 - c1) == (r1 - r2, c1 - c2)  # straight
    assert (r0 - r1, c0 - c1) == MOVE[env.direction.item()]
    assert sorted(obs[0, 1].flatten().tolist())[-3:] == [env.unit, 2 * env.unit, 3 * env.unit]
    check_board(env, obs)


def test_every_episode_draws_a_new_start():
    env = Env(1, size=5, seed=2)
    starts = set()
    for _ in range(50):
        snake_board(env, 0, [(0, 2), (1, 2), (2, 2)], UP, apple=(4, 4))
        assert step(env, UP)[2].item()  # into the wall: a new episode
        starts.add((int(env.head), int(env.direction), int(env.apple)))
    assert len(starts) > 25


def test_random_play_keeps_every_invariant():
    env = Env(256, size=6, seed=3)
    obs = env.reset()
    check_board(env, obs)
    gen = torch.Generator().manual_seed(0)
    episodes = apples = 0
    for _ in range(300):
        obs, reward, done, info = env.step(torch.randint(0, 4, (256,), generator=gen))
        check_board(env, obs)  # the apple is never on the snake, bodies stay consistent
        assert torch.equal(reward != 0, (reward == 1) | (reward == -1))
        episodes, apples = episodes + int(done.sum()), apples + int((reward == 1).sum())
        ret = info["episode_return"][done]
        died = (~info["starved"] & ~info["won"])[done]
        assert torch.equal(ret, info["apples"][done] - died.float())
    assert episodes > 1000 and apples > 100


def test_starts_cover_all_directions_and_fit_on_small_boards():
    env = Env(2000, size=3, seed=5)
    assert set(env.direction.tolist()) == {UP, RIGHT, DOWN, LEFT}
    check_board(env, env.reset())


def test_same_seed_same_run_and_reset_replays():
    def run(env):
        gen = torch.Generator().manual_seed(1)
        out = [env.reset()]
        for _ in range(50):
            out.append(env.step(torch.randint(0, 4, (env.num_envs,), generator=gen))[0])
        return torch.stack(out)

    a, b = Env(64, seed=7), Env(64, seed=7)
    first = run(a)
    assert torch.equal(first, run(b)) and torch.equal(first, run(a))
    assert not torch.equal(first, run(Env(64, seed=8)))


def test_rank_streams_are_disjoint_and_match_one_big_env():
    n, steps = 32, 60
    gen = torch.Generator().manual_seed(2)
    actions = torch.randint(0, 4, (steps, 2 * n), generator=gen)
    whole, rank0, rank1 = Env(2 * n, seed=4), Env(n, seed=4), Env(n, seed=4, env_id_offset=n)
    obs = [(whole.reset(), rank0.reset(), rank1.reset())]
    for a in actions:
        obs.append((whole.step(a)[0], rank0.step(a[:n])[0], rank1.step(a[n:])[0]))
    for w, r0, r1 in obs:
        assert torch.equal(w[:n], r0) and torch.equal(w[n:], r1)
    assert not torch.equal(obs[0][1], obs[0][2])  # rank 1's boards are not rank 0's
    assert not torch.equal(torch.stack([o[1] for o in obs]), torch.stack([o[2] for o in obs]))


def test_fixed_shape_path_matches_the_cpu_path():
    """Off CPU every update runs over all boards, blended by mask; it must give the same game."""
    subset, fixed = Env(48, size=5, seed=9), Env(48, size=5, seed=9)
    fixed.fixed_shapes = True
    fixed.reset()
    gen = torch.Generator().manual_seed(3)
    for _ in range(200):
        a = torch.randint(0, 4, (48,), generator=gen)
        out_s, out_f = subset.step(a), fixed.step(a)
        assert all(torch.equal(x, y) for x, y in zip(out_s[:3], out_f[:3], strict=True))
        assert all(torch.equal(out_s[3][k], out_f[3][k]) for k in out_s[3])
    for name, value in subset.state_dict().items():
        assert torch.equal(value, fixed.state_dict()[name]), name


def test_state_dict_round_trip_continues_identically():
    gen = torch.Generator().manual_seed(4)
    actions = torch.randint(0, 4, (80, 16), generator=gen)
    env = Env(16, size=5, seed=11)
    for a in actions[:40]:
        env.step(a)
    saved = env.state_dict()
    expected = [env.step(a) for a in actions[40:]]
    resumed = Env(16, size=5, seed=99)  # a different seed: the state dict carries the streams
    resumed.load_state_dict(saved)
    for a, (obs, reward, done, info) in zip(actions[40:], expected, strict=True):
        obs2, reward2, done2, info2 = resumed.step(a)
        assert torch.equal(obs, obs2) and torch.equal(reward, reward2) and torch.equal(done, done2)
        assert all(torch.equal(info[k], info2[k]) for k in info)
    with pytest.raises(ValueError):
        Env(8, size=5).load_state_dict(saved)


def test_splitmix64_matches_the_reference():
    def reference(z):
        z = (z + 0x9E3779B97F4A7C15) % 2**64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
        return z ^ (z >> 31)

    assert reference(0) == 0xE220A8397B1DCDAF  # splitmix64's first output from state 0
    inputs = [0, 1, 12345, 2**63 - 1, 2**63, 2**64 - 1, 0xDEADBEEFCAFEBABE]
    signed = lambda u: u - 2**64 if u >= 2**63 else u
    z = torch.tensor([signed((u + 0x9E3779B97F4A7C15) % 2**64) for u in inputs])
    assert snake._mix64(z).tolist() == [signed(reference(u)) for u in inputs]


def test_render_board():
    env = crafted([(1, 2), (1, 1), (1, 0)], RIGHT, apple=(3, 3), size=4)
    text = snake.render(env, 0)
    lines = text.splitlines()
    assert lines[0] == lines[5] == "# # # # # #"
    assert lines[2] == "# o o @ . #" and lines[4] == "# . . . * #"
    assert "length 3" in lines[-1]


def test_bench_env_and_bad_size():
    assert snake.bench_env(Env(8), steps=5) > 0
    with pytest.raises(snake.ArgError, match="--board-size must be in"):
        snake.check_args(snake.Args(num_envs=8, board_size=2), 1)
