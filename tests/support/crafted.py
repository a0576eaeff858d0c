"""Crafted states of the scripts' own environments, written into the env's tensors from the tests (the scripts
hold no test seams): a Snake board and an Arena room as a rule's test needs them."""

import torch


def snake_board(env, i: int, body: list, direction: int, apple: tuple) -> None:
    """Board `i` of a SnakeEnv holds the snake `body`, (row, col) cells from head to tail, and the apple."""
    cells = [r * env.size + c for r, c in body]
    env.life[i] = 0
    for j, cell in enumerate(cells):
        env.life[i, cell] = (len(cells) - j) * env.unit
    env.head[i], env.direction[i], env.length[i] = cells[0], direction, len(cells)
    env.apple[i] = apple[0] * env.size + apple[1]
    env.hunger[i] = env.steps[i] = 0


def arena_room(env, i: int, agent: tuple, objects=(), inventory=(0, 0, 0)) -> None:
    """Room `i` of an ArenaEnv at step 0 of an episode with the agent at (row, col), the given objects, each
    (kind, row, col, steps until ready), in slots of their kind, and the inventory (ore, battery, hearts).
    Slots left over are parked in the (unreachable) corner cell 0, never ready."""
    env.cell[i], env.obj_pos[i], env.obj_ready_at[i] = env._empty_room, 0, 2**62
    slots = env._kinds.tolist()
    for kind, row, col, wait in objects:
        k = slots.index(kind)  # the first unused slot of that kind
        slots[k] = None
        env.cell[i, env.cell_index(row, col)], env.obj_pos[i, k] = kind, env.cell_index(row, col)
        env.obj_ready_at[i, k] = wait
    env.pos[i], env.inv[i], env.made[i], env.steps[i] = env.cell_index(*agent), torch.tensor(inventory), 0, 0
