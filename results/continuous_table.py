"""MuJoCo at 1M steps: ppo_ddp_continuous.py's runs in results/, CleanRL's own ppo_continuous_action.py run
here and CleanRL's published table, by two measures; written to results/continuous.json and printed as the
table of docs/continuous.md."""

import csv
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
UPDATE = (
    2048  # global steps per update in both scripts: CleanRL's 1 env x 2,048, ours 2 ranks x 1 env x 1,024
)
ENVS = ("Hopper-v4", "HalfCheetah-v4", "Walker2d-v4")


def last_100(returns: list[tuple[float, float]]) -> float:
    """The mean return of the last 100 episodes, from (episodes, mean return) groups oldest first; a group
    that crosses the 100th counts in part."""
    n = total = 0.0
    for count, mean in reversed(returns):
        take = min(count, 100 - n)
        n, total = n + take, total + take * mean
        if n >= 100:
            break
    return total / n


def ours(run: Path) -> dict:
    """Both measures and the final statistics spread from a run's progress.csv (a row per update)."""
    rows = list(csv.DictReader((run / "progress.csv").open()))
    ended = [r for r in rows if float(r["charts/episodes"] or 0) > 0]
    groups = [(float(r["charts/episodes"]), float(r["charts/episodic_return"])) for r in ended]
    last = int(rows[-1]["update"])
    last10 = [float(r["charts/episodic_return"]) for r in ended if int(r["update"]) > last - 10]
    spread = [float(r["norm/obs_mean_spread"]) for r in rows if r.get("norm/obs_mean_spread")]
    return {
        "steps": int(rows[-1]["global_step"]),
        "last_10_updates": statistics.mean(last10),
        "last_100_episodes": last_100(groups),
        "max_obs_mean_spread": max(spread, default=float("nan")),
        "sps_median": statistics.median(float(r["charts/SPS"]) for r in rows),
    }


def cleanrl(run: Path) -> dict:
    """Both measures from CleanRL's episodes.csv (its TensorBoard episodes: global step, return, length)."""
    rows = list(csv.DictReader((run / "episodes.csv").open()))
    by_update: dict[int, list[float]] = {}
    for r in rows:
        by_update.setdefault(-(-int(r["global_step"]) // UPDATE), []).append(float(r["episodic_return"]))
    last = max(by_update)
    last10 = [statistics.mean(v) for u, v in by_update.items() if u > last - 10]
    return {
        "steps": int(rows[-1]["global_step"]),
        "last_10_updates": statistics.mean(last10),
        "last_100_episodes": last_100([(1.0, float(r["episodic_return"])) for r in rows]),
    }


def mean_std(values: list[float]) -> str:
    return (
        f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
        if len(values) > 1
        else (f"{values[0]:.1f}")
    )


def main() -> None:
    published = json.loads((HERE / "cleanrl_published.json").read_text())
    out = {}
    here = "CleanRL's script here, seed 1 (last 100 episodes / last 10 updates)"
    print(f"| env | ours, last 100 episodes | ours, last 10 updates | seeds | {here} | CleanRL published |")
    print("|---|---|---|---|---|---|")
    for env in ENVS:
        name = env.removesuffix("-v4")
        runs = sorted(HERE.glob(f"cont_{name}_s*"))
        if not runs:
            continue
        measured = {run.name: ours(run) for run in runs}
        here = HERE / f"cleanrl_{name}_s1"
        theirs = cleanrl(here) if here.exists() else None
        out[env] = {"ours": measured, "cleanrl_here": theirs}
        mean, std = published[env]["ppo_continuous_action.py"]
        hundred = [m["last_100_episodes"] for m in measured.values()]
        ten = [m["last_10_updates"] for m in measured.values()]
        seeds = ", ".join(r.name.rsplit("_s", 1)[1] for r in runs)
        there = f"{theirs['last_100_episodes']:.1f} / {theirs['last_10_updates']:.1f}" if theirs else "-"
        print(
            f"| {env} | {mean_std(hundred)} | {mean_std(ten)} | {seeds} | {there} | {mean:.2f} ± {std:.2f} |"
        )
    ablation = {r.name: ours(r) for r in sorted(HERE.glob("cont_*_nosync_s*"))}
    out["ablation_per_rank"] = ablation
    for name, m in ablation.items():
        print(f"{name}: {m}")
    (HERE / "continuous.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
