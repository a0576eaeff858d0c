"""ppo_ddp.py --agent lstm: the memory is carried through the rollout, zeroed where an episode begins, replayed
whole in the update (minibatches of whole rooms), equal on 2 ranks to one process, and part of every run."""

import pytest
import torch
from equivalence import lstm_reference, make_recurrent_problem, reference_recurrent_update
from helpers import explain, gif_frames, progress, python, run, torchrun, torchrun_cmd

import ppo_ddp as arena

SMALL_LSTM = [
    "--agent=lstm",
    "--num-envs=16",
    "--num-steps=32",
    "--num-minibatches=2",
    "--hidden-size=16",
    "--print-interval=0",
    "--dist-timeout=60",
]


def lstm_agent(**kw):
    args = arena.Args(agent="lstm", hidden_size=16, **kw)
    env = arena.Env(6, "cpu", 5, 0, args)
    torch.manual_seed(0)
    return args, env, arena.Agent(env.obs_shape, env.n_actions, args)


def test_the_agent_zeroes_each_rooms_memory_where_its_episode_begins():
    """A crafted sequence: rooms begin episodes at different steps (room 0 at step 2, room 1 at 4, room 2 at 2
    and 5, room 3 never) with a nonzero memory at the start. The agent's replay of the whole sequence, and its
    step-by-step play (as in a rollout), both equal the hand-written reference; a stale memory (no reset)
    would give other log-probs in exactly the rooms that reset."""
    _, env, agent = lstm_agent()
    T, n = 7, 4
    g = torch.Generator().manual_seed(2)
    obs = torch.randint(0, 2, (T, n, *env.obs_shape), generator=g, dtype=torch.uint8)
    state0 = torch.randn(n, 2, 16, generator=g)
    dones = torch.zeros(T, n)
    dones[2, 0] = dones[4, 1] = dones[2, 2] = dones[5, 2] = 1
    actions = torch.randint(0, env.n_actions, (T, n), generator=g)
    with torch.no_grad():
        logits, values = lstm_reference(agent, obs, state0, dones)
        expected = torch.distributions.Categorical(logits=logits).log_prob(actions)
        _, logprob, _, value, state = agent(obs.flatten(0, 1), state0, dones.flatten(), actions.flatten())
        torch.testing.assert_close(logprob.view(T, n), expected)
        torch.testing.assert_close(value.view(T, n), values)
        stepwise, memory = [], state0
        for t in range(T):
            _, lp, _, _, memory = agent(obs[t], memory, dones[t], actions[t])
            stepwise.append(lp)
        torch.testing.assert_close(torch.stack(stepwise), expected)
        torch.testing.assert_close(memory, state)
        stale_logits, _ = lstm_reference(agent, obs, state0, torch.zeros(T, n))
        stale = torch.distributions.Categorical(logits=stale_logits).log_prob(actions)
    differs = ((stale - expected).abs() > 1e-5).any(0)
    assert differs.tolist() == [True, True, True, False]  # the reset matters in the rooms that reset, only there


def test_the_update_replays_the_rollout_from_its_first_memory(one_process_group):
    """A real rollout of rooms whose episodes last 5 steps, over 12 steps, starting from the memory the previous
    rollout left: its log-probs equal the reference's replay of the whole rollout (resets included), and each
    minibatch the update draws holds whole rooms, every step of each, and replays to the same log-probs."""
    args, env, agent = lstm_agent(num_steps=12, episode_length=5, num_minibatches=3)
    fresh = agent.initial_state(6, "cpu")
    carry = {"next_obs": env.reset(), "next_done": torch.zeros(6), "next_state": fresh}
    carry = arena.rollout(agent, env, carry, args)[-1]
    state0 = carry["next_state"]  # the memory the first rollout left, from which the second one starts
    b, _, ep, _ = arena.rollout(agent, env, carry, args)
    assert not fresh.any() and state0.abs().sum() > 0  # the memory carried over from the previous rollout
    assert b["dones"].sum(1).tolist() == [6 if t in (3, 8) else 0 for t in range(12)] and ep["episodes"] == 12
    with torch.no_grad():
        logits, _ = lstm_reference(agent, b["obs"], state0, b["dones"])
        expected = torch.distributions.Categorical(logits=logits).log_prob(b["actions"].long())
    torch.testing.assert_close(b["logprobs"], expected)
    flat = {k: v.flatten(0, 1) for k, v in b.items()}
    mbs = arena.minibatches(72, 3, torch.Generator().manual_seed(4), num_envs=6)
    rooms = [mb.view(12, -1) % 6 for mb in mbs]
    assert all((r == r[0]).all() for r in rooms)  # every step of the same rooms
    assert sorted(torch.cat([r[0] for r in rooms]).tolist()) == list(range(6))  # the rooms split, none twice
    for mb in mbs:
        x = arena.minibatch(flat, mb, state0)
        torch.testing.assert_close(x["state"], state0[mb[:2]])
        with torch.no_grad():
            logprob = agent(x["obs"], x["state"], x["dones"], x["actions"].long())[1]
        torch.testing.assert_close(logprob, flat["logprobs"][mb])


def test_recurrent_ddp_update_equals_one_process(tmp_path):
    """One ppo_update on 2 ranks, each with its N rooms (nonzero first memory, episodes beginning mid-sequence),
    equals the plain one-process update over all 2N rooms with the hand-written LSTM (SGD, no clipping: a
    gradient summed over ranks, or minibatches cut by step, would show in the weights)."""
    out = tmp_path / "two.pt"
    p = run(torchrun_cmd("tests/ddp_equivalence_worker.py", "ppo_ddp", str(out), "recurrent"), 120)
    assert p.returncode == 0, explain(p)
    two, ref = torch.load(out, weights_only=False), reference_recurrent_update()
    assert two["steps"] == 4  # 2 epochs x 2 minibatches
    _, _, start, _, _ = make_recurrent_problem()
    assert any(not torch.equal(ref[k], start.state_dict()[k]) for k in ref)  # the update moved the weights
    for k in ref:
        torch.testing.assert_close(two["model"][k], ref[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "loss, flags, play",
    [  # grpo: --find-unused auto turns it on (the critic is unused)
        ("grpo", ["--eval-mode=async", "--eval-interval=2"], []),  # its evaluations played snapshots alone
        ("action_supervised", ["--no-find-unused", "--hack", "--eval-interval=1", "--capture-video"], ["--render"]),
    ],
)
def test_two_rank_runs_with_each_loss_and_the_model_plays(tmp_path, loss, flags, play):
    """With the losses that leave the critic unused (ppo: the resume and elastic tests), 2 ranks end with
    identical weights and a complete run directory holding every rank's memory, the evaluations (async; local
    with a video) ran, and the final model plays alone in one process."""
    args = [*SMALL_LSTM, f"--loss={loss}", "--total-timesteps=4096", "--checkpoint-interval=2", "--eval-episodes=4"]
    p = torchrun("ppo_ddp.py", *args, *flags, "--run-name=r", cwd=tmp_path, timeout=180)
    assert p.returncode == 0 and "parameters identical on all 2 ranks after 4 updates" in p.stdout, explain(p)
    run_dir = tmp_path / "runs/r"
    rows = progress(run_dir)
    assert [r["update"] for r in rows] == ["1", "2", "3", "4"] and rows[-1]["eval/hearts"], rows[-1]
    assert {f.name for f in (run_dir / "checkpoints").iterdir()} == {"update_00000002.pt", "update_00000004.pt"}
    ckpt = torch.load(run_dir / "checkpoints/update_00000004.pt", weights_only=False)
    memory = [r["next_state"] for r in ckpt["ranks"]]
    assert [s.shape for s in memory] == [torch.Size([16, 2, 16])] * 2  # every rank's rooms' memory
    assert not torch.equal(memory[0], memory[1])
    if "--capture-video" in flags:
        assert gif_frames(run_dir / "videos/update_00000004.gif") > 1
    if play:
        p = python("ppo_ddp.py", "--eval-checkpoint", str(run_dir / "final_model.pt"), *play, "--render-fps=10000")
        assert p.returncode == 0 and "1 greedy episodes" in p.stdout and "@" in p.stdout, explain(p)


def test_rooms_that_do_not_split_into_minibatches_are_refused_on_every_rank(tmp_path):
    """6 rooms, 4 minibatches: the steps would split (6 x 32 = 4 x 48), the rooms cannot."""
    args = [*SMALL_LSTM, "--num-envs=6", "--num-minibatches=4", "--total-timesteps=4096", "--run-name=bad"]
    p = torchrun("ppo_ddp.py", *args, cwd=tmp_path, timeout=120)
    assert p.returncode != 0 and "exitcode: 2" in p.stderr, explain(p)
    assert (
        p.stderr.count(
            "error: an agent with memory trains on whole envs: --num-envs 6 must be divisible by --num-minibatches 4"
        )
        == 2
    )
    assert not (tmp_path / "runs/bad").exists()
