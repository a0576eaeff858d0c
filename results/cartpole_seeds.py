"""CartPole-v1 at 500k steps, ppo_ddp_gym.py against CleanRL's own ppo.py run here,
over every seed in results/."""

import argparse
import csv
import itertools
import json
import math
import random
import re
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
UPDATE = 512  # global steps per update (iteration) in both scripts: 4 envs x 128 steps
UPDATES = 976  # 500,000 // 512
ISSUE_SEEDS = (1, 2, 3)  # the seeds issue #22 names
BAR = 484.0  # the issue's bar: CleanRL's published 490.04 less its spread


def ours(path: Path) -> dict[str, float]:
    """Both measures from a run's progress.csv (a row per update: its episodes' count and mean return)."""
    rows = [r for r in csv.DictReader(path.open()) if float(r["charts/episodes"]) > 0]
    last10 = [float(r["charts/episodic_return"]) for r in rows if int(r["update"]) > UPDATES - 10]
    n = total = 0.0
    for r in reversed(rows):  # the last updates that hold at least 100 episodes, weighted by their count
        n += float(r["charts/episodes"])
        total += float(r["charts/episodes"]) * float(r["charts/episodic_return"])
        if n >= 100:
            break
    return {"last_10_updates": statistics.mean(last10), "last_100_episodes": total / n}


def cleanrl(episodes: list[list[float]]) -> dict[str, float]:
    """Both measures from CleanRL's episodes, [global_step, return] each (as its log prints them)."""
    by_update: dict[int, list[float]] = {}
    for step, ret in episodes:
        by_update.setdefault(math.ceil(step / UPDATE), []).append(ret)
    last10 = [statistics.mean(v) for u, v in by_update.items() if u > UPDATES - 10]
    return {
        "last_10_updates": statistics.mean(last10),
        "last_100_episodes": statistics.mean(r for _, r in episodes[-100:]),
    }


def parse_cleanrl_log(text: str) -> list[list[float]]:
    """ppo.py prints `global_step=52, episodic_return=[13.]` for each episode."""
    return [
        [int(s), float(r)] for s, r in re.findall(r"global_step=(\d+), episodic_return=\[?([-\d.]+)", text)
    ]


def summary(values: dict[int, float]) -> dict:
    """Mean over the issue's seeds and over all, bootstrap 95% interval, and share of 3-seed means >= BAR."""
    xs = list(values.values())
    rng = random.Random(0)
    boot = sorted(statistics.mean(rng.choices(xs, k=len(xs))) for _ in range(10_000))
    triples = [statistics.mean(t) for t in itertools.combinations(xs, 3)]
    return {
        "seeds_1_3": statistics.mean(values[s] for s in ISSUE_SEEDS),
        "all_seeds": statistics.mean(xs),
        "ci95": [boot[249], boot[9749]],
        "share_of_3_seed_means_at_or_above_bar": sum(m >= BAR for m in triples) / len(triples),
    }


def permutation_p(a: list[float], b: list[float]) -> float:
    """Two-sided exact permutation test of the difference of the means."""
    pooled, observed = a + b, abs(statistics.mean(a) - statistics.mean(b))
    total, hits = sum(pooled), 0
    for part in itertools.combinations(pooled, len(a)):
        s = sum(part)
        hits += abs(s / len(a) - (total - s) / len(b)) >= observed - 1e-9
    return hits / math.comb(len(pooled), len(a))


def measure() -> dict:
    here = json.loads((HERE / "cleanrl_ppo_here.json").read_text())
    theirs = {int(s): cleanrl(v["episodes"]) for s, v in here["seeds"].items()}
    mine = {int(p.name.rsplit("_s", 1)[1]): ours(p / "progress.csv") for p in HERE.glob("gym_CartPole_s*")}
    seeds = sorted(set(mine) & set(theirs))
    out = {"seeds": seeds, "bar": BAR, "measures": {}}
    for m in ("last_10_updates", "last_100_episodes"):
        a, b = [mine[s][m] for s in seeds], [theirs[s][m] for s in seeds]
        out["measures"][m] = {
            "ours": {"per_seed": a, **summary(dict(zip(seeds, a, strict=True)))},
            "cleanrl_here": {"per_seed": b, **summary(dict(zip(seeds, b, strict=True)))},
            "permutation_p": permutation_p(a, b),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--cleanrl-log", nargs=2, action="append", default=[], metavar=("SEED", "LOG"), help="add a seed"
    )
    p.add_argument(
        "--check", action="store_true", help="fail if cartpole_seeds.json is not what the files give"
    )
    args = p.parse_args()
    path = HERE / "cleanrl_ppo_here.json"
    for seed, log in args.cleanrl_log:
        here = json.loads(path.read_text())
        episodes = parse_cleanrl_log(Path(log).read_text())
        here["seeds"][seed] = {**{k: round(v, 2) for k, v in cleanrl(episodes).items()}, "episodes": episodes}
        path.write_text(json.dumps(here) + "\n")
    result, out = measure(), HERE / "cartpole_seeds.json"
    if args.check:
        raise SystemExit(
            0 if json.loads(out.read_text()) == json.loads(json.dumps(result)) else f"{out} is stale"
        )
    out.write_text(json.dumps(result, indent=1) + "\n")
    for m, v in result["measures"].items():
        for who in ("ours", "cleanrl_here"):
            s = v[who]
            print(
                f"{m:18} {who:13} seeds 1-3 {s['seeds_1_3']:6.1f}  "
                f"{len(result['seeds'])} seeds {s['all_seeds']:6.1f}"
                f" [{s['ci95'][0]:.1f}, {s['ci95'][1]:.1f}]  3-seed means >= {BAR:g}: "
                f"{s['share_of_3_seed_means_at_or_above_bar']:.0%}"
            )
        print(f"{m:18} difference of the means: permutation p = {v['permutation_p']:.2f}")


if __name__ == "__main__":
    main()
