"""MiniGrid-DoorKey-5x5 and LunarLander-v3: ppo_ddp_gym.py's seeds in results/ beside RL Zoo's published PPO
scores; written to results/gym_envs.json and printed as the table of docs/gym.md."""

import csv
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = {"MiniGrid-DoorKey-5x5-v0": "gym_DoorKey_s", "LunarLander-v3": "gym_LunarLander_s"}
RL_ZOO = {  # DLR-RM/rl-baselines3-zoo benchmark.md (commit 22e3ff2): PPO, mean ± std, at its budget
    "MiniGrid-DoorKey-5x5-v0": {"env": "MiniGrid-DoorKey-5x5-v0", "score": [0.964, 0.006], "steps": 100_000},
    "LunarLander-v3": {"env": "LunarLander-v2", "score": [242.119, 31.823], "steps": 1_000_000},
}


def measures(run: Path) -> dict:
    """The last 100 training episodes, the last 10 updates' episode means, and the final model's greedy play
    over 100 episodes (greedy_100.json)."""
    rows = list(csv.DictReader((run / "progress.csv").open()))
    ended = [r for r in rows if float(r["charts/episodes"] or 0) > 0]
    n = total = 0.0
    for r in reversed(ended):
        take = min(float(r["charts/episodes"]), 100 - n)
        n, total = n + take, total + take * float(r["charts/episodic_return"])
        if n >= 100:
            break
    last = int(rows[-1]["update"])
    greedy = json.loads((run / "greedy_100.json").read_text())["eval/episode_return"]
    return {
        "steps": int(rows[-1]["global_step"]),
        "last_100_episodes": total / n,
        "last_10_updates": statistics.mean(
            float(r["charts/episodic_return"]) for r in ended if int(r["update"]) > last - 10
        ),
        "greedy_100_episodes": greedy,
        "sps_median": statistics.median(float(r["charts/SPS"]) for r in rows),
    }


def summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    out = {}
    print("| env | steps | seeds | greedy, 100 episodes | last 100 episodes | last 10 updates | RL Zoo PPO |")
    print("|---|---|---|---|---|---|---|")
    for env, prefix in RUNS.items():
        runs = sorted(HERE.glob(f"{prefix}*"))
        if not runs:
            continue
        got = {run.name: measures(run) for run in runs}
        out[env] = {"ours": got, "rl_zoo": RL_ZOO[env]}
        column = {k: summary([m[k] for m in got.values()]) for k in next(iter(got.values()))}
        ref = RL_ZOO[env]
        zoo = f"{ref['score'][0]} ± {ref['score'][1]} ({ref['env']}, {ref['steps']:,} steps)"
        seeds = ", ".join(run.name.rsplit("_s", 1)[1] for run in runs)
        steps = next(iter(got.values()))["steps"]
        cells = [column[k] for k in ("greedy_100_episodes", "last_100_episodes", "last_10_updates")]
        print(f"| {env} | {steps:,} | {seeds} | {' | '.join(cells)} | {zoo} |")
    (HERE / "gym_envs.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
