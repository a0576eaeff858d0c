"""ppo_ddp.py --agent lstm: the memory is zeroed where an episode begins (against a hand-written LSTM), and
part of every run with each loss. That the update replays whole rooms from the memory their rollout began
with, and that 2 ranks equal one process, is tests/test_invariants.py's `ppo_ddp lstm` case."""

import pytest
import torch
from helpers import explain, gif_frames, progress, python, torchrun

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


def lstm_reference(agent, obs, memory0, dones):
    """The LSTM agent's logits and values written out, one step at a time: obs [T, B, ...], memory0 [B, 2, h],
    dones [T, B]. Gates by hand from the agent's LSTM weights; a room's memory is zeroed where its episode
    begins. Shares no code with the agent's recurrence (only its trunk and heads, plain Linear layers)."""
    x = obs.float()
    hidden = agent.trunk(torch.cat([x[..., :-1], x[..., -1:].clamp(max=10) / 10], -1))
    lstm = agent.lstm
    w_ih, w_hh, b_ih, b_hh = lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0
    h, c, out = memory0[:, 0], memory0[:, 1], []
    for t in range(len(obs)):
        keep = 1.0 - dones[t][:, None]
        h, c = h * keep, c * keep
        i, f, g, o = (hidden[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    out = torch.stack(out)
    return agent.actor(out), agent.critic(out).squeeze(-1)


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
    memory0 = torch.randn(n, 2, 16, generator=g)
    dones = torch.zeros(T, n)
    dones[2, 0] = dones[4, 1] = dones[2, 2] = dones[5, 2] = 1
    actions = torch.randint(0, env.n_actions, (T, n), generator=g)
    with torch.no_grad():
        logits, values = lstm_reference(agent, obs, memory0, dones)
        expected = torch.distributions.Categorical(logits=logits).log_prob(actions)
        _, logprob, _, value, memory_after = agent(
            obs.flatten(0, 1), memory0, dones.flatten(), actions.flatten()
        )
        torch.testing.assert_close(logprob.view(T, n), expected)
        torch.testing.assert_close(value.view(T, n), values)
        stepwise, memory = [], memory0
        for t in range(T):
            _, lp, _, _, memory = agent(obs[t], memory, dones[t], actions[t])
            stepwise.append(lp)
        torch.testing.assert_close(torch.stack(stepwise), expected)
        torch.testing.assert_close(memory, memory_after)
        stale_logits, _ = lstm_reference(agent, obs, memory0, torch.zeros(T, n))
        stale = torch.distributions.Categorical(logits=stale_logits).log_prob(actions)
    differs = ((stale - expected).abs() > 1e-5).any(0)
    # the reset matters in the rooms that reset, only there
    assert differs.tolist() == [True, True, True, False]


@pytest.mark.parametrize(
    "loss, flags, play",
    [  # grpo: --find-unused auto turns it on (the critic is unused)
        ("grpo", ["--eval-mode=async", "--eval-interval=2"], []),  # its evaluations played snapshots alone
        (
            "action_supervised",
            ["--no-find-unused", "--hack", "--eval-interval=1", "--capture-video"],
            ["--render"],
        ),
    ],
)
@pytest.mark.slow
def test_two_rank_runs_with_each_loss_and_the_model_plays(tmp_path, loss, flags, play):
    """With the losses that leave the critic unused (ppo: the resume and elastic tests), 2 ranks end with
    identical weights and a complete run directory holding every rank's memory, the evaluations (async; local
    with a video) ran, and the final model plays alone in one process."""
    args = [
        *SMALL_LSTM,
        f"--loss={loss}",
        "--total-timesteps=4096",
        "--checkpoint-interval=2",
        "--eval-episodes=4",
    ]
    p = torchrun("ppo_ddp.py", *args, *flags, "--run-name=r", cwd=tmp_path, timeout=180)
    assert p.returncode == 0 and "parameters identical on all 2 ranks after 4 updates" in p.stdout, explain(p)
    run_dir = tmp_path / "runs/r"
    rows = progress(run_dir)
    assert [r["update"] for r in rows] == ["1", "2", "3", "4"] and rows[-1]["eval/hearts"], rows[-1]
    checkpoints = {f.name for f in (run_dir / "checkpoints").iterdir()}
    assert checkpoints == {"update_00000002.pt", "update_00000004.pt"}
    ckpt = torch.load(run_dir / "checkpoints/update_00000004.pt", weights_only=False)
    memory = [r["rollout_start"][2] for r in ckpt["ranks"]]  # next_obs, next_done, next_memory
    assert [s.shape for s in memory] == [torch.Size([16, 2, 16])] * 2  # every rank's rooms' memory
    assert not torch.equal(memory[0], memory[1])
    if "--capture-video" in flags:
        assert gif_frames(run_dir / "videos/update_00000004.gif") > 1
    if play:
        p = python(
            "ppo_ddp.py", "--eval-checkpoint", str(run_dir / "final_model.pt"), *play, "--render-fps=10000"
        )
        assert p.returncode == 0 and "1 greedy episodes" in p.stdout and "@" in p.stdout, explain(p)


def test_rooms_that_do_not_split_into_minibatches_are_refused_on_every_rank(tmp_path):
    """6 rooms, 4 minibatches: the steps would split (6 x 32 = 4 x 48), the rooms cannot."""
    args = [*SMALL_LSTM, "--num-envs=6", "--num-minibatches=4", "--total-timesteps=4096", "--run-name=bad"]
    p = torchrun("ppo_ddp.py", *args, cwd=tmp_path, timeout=120)
    assert p.returncode != 0 and "exitcode: 2" in p.stderr, explain(p)
    message = (
        "error: an agent with memory trains on whole rooms: "
        "--num-envs 6 must be divisible by --num-minibatches"
    )
    assert p.stderr.count(message) == 2, explain(p)
    assert not (tmp_path / "runs/bad").exists()
