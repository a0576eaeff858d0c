"""Every chart in the README, drawn from what the runs and benchmarks wrote: nothing in here is a
typed-in figure.

  python plots.py                                   # results/ -> the PNGs in docs/img/
  python plots.py --results R --out-dir D           # another results directory (the tests use a small one)

Reads, under --results (see results/README.md for the command that made each file):
  <run>/progress.csv, <run>/config.json   training runs: every update's metrics, the resolved flags
  baselines/<script>[_<setting>]_<policy>.json   `python SCRIPT --baseline POLICY --eval-episodes 1000
                                                 --eval-json ...`
  bench_ddp.json                          `torchrun ... benchmark_ddp.py --json-out ...`
  scaling_*.json                          `python bench_scaling.py [--script ppo_ddp.py] --json-out ...`
  cleanrl_published.json                  CleanRL's published returns (its docs), beside ours in
                                          gym_returns.png and continuous_returns.png
  cleanrl_<env>_s<seed>/episodes.csv      CleanRL's own script run here (its TensorBoard episodes)
matplotlib is a development requirement (requirements-dev.txt); the training scripts never import it.
"""

import csv
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import tyro  # noqa: E402

ROOT = Path(__file__).resolve().parent


@dataclass
class Args:
    results: str = str(ROOT / "results")
    """the directory the runs and benchmarks were saved to"""
    out_dir: str = str(ROOT / "docs" / "img")
    """where the PNGs go (the README and docs/ show them from docs/img/)"""
    window: int = 20
    """updates in the moving average of an episode metric (weighted by the episodes that ended in each)"""


# -- what each chart shows: results/<run> -> its label. The first run of a chart is its reference; the
#    command under the chart names the flags in which each other run's config.json differs from it --
SNAKE_RUNS = {"snake_default": "default run"}
ARENA_RUNS = {
    "arena_default": "ppo (the earlier defaults)",
    "arena_grpo": "grpo (critic-free)",
    "arena_action_supervised": "action_supervised (imitates the teacher)",
    "arena_no_shaping": "ppo, hearts-only reward",
    "arena_constant": "ppo, constant schedules",
}
# the partially observed setting: mlp and lstm, two seeds each, against the default run's flags
MEMORY_RUNS = {
    "arena_po_mlp_s1": "mlp, seed 1",
    "arena_po_mlp_s2": "mlp, seed 2",
    "arena_po_lstm_s1": "lstm, seed 1",
    "arena_po_lstm_s2": "lstm, seed 2",
}
# a run at today's defaults: each Arena chart's commands are its flags against them
DEFAULTS_RUN = "arena_tuned_s1"
# tune.py's best flags against the earlier defaults at the default length, seed by seed (docs/tune.md)
TUNED_RUNS = {
    "arena_default": "earlier defaults, seed 1",
    "arena_default_s2": "earlier defaults, seed 2",
    "arena_default_s3": "earlier defaults, seed 3",
    "arena_tuned_s1": "tuned (the defaults now), seed 1",
    "arena_tuned_s2": "tuned, seed 2",
    "arena_tuned_s3": "tuned, seed 3",
}
TUNED_STYLE = {
    name: {
        "color": "tab:orange" if "tuned" in name else "tab:blue",
        "ls": {"2": "--", "3": ":"}.get(name[-1], "-"),
    }
    for name in TUNED_RUNS
}
MEMORY_STYLE = {
    name: {"color": "tab:orange" if "lstm" in name else "tab:blue", "ls": "-" if name[-1] == "1" else "--"}
    for name in MEMORY_RUNS
}
# config.json keys left out of a run's command: not flags (sizes derived from them, placement), or flags that
# only change what is printed or saved
NOT_FLAGS = {
    "world_size",
    "batch_size_per_rank",
    "global_batch_size",
    "minibatch_size_per_rank",
    "num_updates",
}
NOT_FLAGS |= {"torch_version", "device", "ranks"}
NOT_FLAGS |= {"run_name", "print_interval", "checkpoint_interval", "track", "wandb_project_name"}
# Each chart's scripted levels: baselines/<file>.json -> line style; the policy is the file name's last part.
BASELINES = {
    "snake": {"ppo_ddp_snake_random": ":"},
    "arena": {"ppo_ddp_teacher": "--", "ppo_ddp_random": ":"},
    "memory": {"ppo_ddp_po_teacher": "--", "ppo_ddp_po_random": ":"},
}
GYM_RUNS = {  # ppo_ddp_gym.py, each env's seeds: results/gym_<env>_s<seed>
    "CartPole-v1": ["gym_CartPole_s1", "gym_CartPole_s2", "gym_CartPole_s3"],
    "Acrobot-v1": ["gym_Acrobot_s1", "gym_Acrobot_s2", "gym_Acrobot_s3"],
    "BreakoutNoFrameskip-v4": ["gym_Breakout_s1"],
}
CONTINUOUS_RUNS = {  # ppo_ddp_continuous.py, each env's seeds: results/cont_<env>_s<seed>
    "Hopper-v4": ["cont_Hopper_s1", "cont_Hopper_s2", "cont_Hopper_s3"],
    "HalfCheetah-v4": ["cont_HalfCheetah_s1"],
    "Walker2d-v4": ["cont_Walker2d_s1"],
}
CLEANRL_HERE = {"Hopper-v4": "cleanrl_Hopper_s1"}  # CleanRL's ppo_continuous_action.py run here: episodes.csv
ABLATION_RUNS = {"cont_Hopper_s1": "merged over ranks", "cont_Hopper_nosync_s1": "per rank (--no-norm-sync)"}
BENCH_LABELS = {
    "find_unused": "find_unused_parameters=True",
    "hack": "0.0 * out.sum() hack",
    "all_used": "all outputs used",
    "static_graph": "static_graph=True",
    "none": "no fix",
}


class ResultError(FileNotFoundError):
    """A result the charts need is missing or holds nothing to draw: one line on stderr, exit code 2."""


def need(path: Path) -> Path:
    if not path.is_file():
        raise ResultError(f"{path}: missing (results/README.md says which command writes it)")
    return path


def read_progress(run_dir: Path) -> list[dict[str, str]]:
    with open(need(run_dir / "progress.csv"), newline="") as f:
        return list(csv.DictReader(f))


def episode_curve(rows: list[dict[str, str]], metric: str, window: int) -> tuple[list[float], list[float]]:
    """(global steps, moving average of `metric`): each update's value is the mean over the episodes that
    ended in it (empty when none did), so the average over `window` updates weighs each by its episode
    count."""
    xs, ys, acc = [], [], []
    for row in rows:
        if row.get(metric):
            acc.append((float(row[metric]), float(row["charts/episodes"])))
        acc = acc[-window:]
        if acc:
            xs.append(int(row["global_step"]))
            ys.append(sum(v * n for v, n in acc) / sum(n for _, n in acc))
    return xs, ys


def baseline(results: Path, name: str, metric: str) -> float:
    """The level of a scripted policy: its evaluation JSON holds `eval/<info key>` (the tag's last part)."""
    stats = json.loads(need(results / "baselines" / f"{name}.json").read_text())
    return stats[f"eval/{metric.split('/')[-1]}"]


def flags(config: dict, reference: dict) -> str:
    """The command-line flags in which a run's config.json differs from the reference run's (flags that only
    change what is printed or saved, and the sizes derived from flags, left out: NOT_FLAGS; a field the
    reference's older script did not have yet is named)."""
    out = []
    for key, value in config.items():
        if key in NOT_FLAGS or (key in reference and reference[key] == value):
            continue
        flag = key.replace("_", "-")
        out.append(
            f"--{flag}" if value is True else f"--no-{flag}" if value is False else f"--{flag} {value}"
        )
    return " ".join(out)


def caption(fig, text: str) -> None:
    fig.text(0.01, 0.01, text, fontsize=7, color="0.35", ha="left", va="bottom", wrap=True)


def learning_curves(
    results: Path, out: Path, runs: dict, chart: str, metric: str, title: str, args: Args, **kw
) -> Path:
    """One line per run against global steps, with the baselines' levels (BASELINES[chart]) as horizontal
    lines. Each run's command: its flags against kw["reference"] (a run under results/), else against the
    first run. kw["style"]: matplotlib keywords per run."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    lines, script = [], "ppo_ddp_snake" if chart == "snake" else "ppo_ddp"
    reference = (
        json.loads(need(results / kw["reference"] / "config.json").read_text()) if "reference" in kw else None
    )
    for name, label in runs.items():
        rows = read_progress(results / name)
        xs, ys = episode_curve(rows, metric, args.window)
        if not ys:
            raise ResultError(f"{results / name}/progress.csv: no {metric} in any update")
        config = json.loads(need(results / name / "config.json").read_text())
        reference = reference or config
        ax.plot([x / 1e6 for x in xs], ys, label=label, lw=1.6, **kw.get("style", {}).get(name, {}))
        launch = f"torchrun --standalone --nproc-per-node={config['world_size']} {script}.py"
        lines.append(f"{label}: {launch} {flags(config, reference)}".strip() + f" (seed {config['seed']})")
    for name, style in BASELINES[chart].items():
        level, policy = baseline(results, name, metric), name.rsplit("_", 1)[1]
        ax.axhline(level, color="0.3", ls=style, lw=1.2, label=f"{policy} play ({level:.2f})")
    ax.set_xlabel("environment steps (millions, all ranks)")
    ax.set_ylabel(f"{metric.split('/')[-1]} per episode ({args.window}-update moving average)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    caption(fig, "\n".join(lines))
    rows = sum(-(-len(line) // 140) for line in lines)  # the caption's lines as wrapped
    fig.tight_layout(rect=(0, 0.04 + 0.025 * rows, 1, 1))
    return save(fig, out)


def seed_curves(ax, results: Path, runs: list[str], window: int) -> None:
    """Each run's episodic return against global steps (millions), labelled with its seed."""
    for name in runs:
        xs, ys = episode_curve(read_progress(results / name), "charts/episodic_return", window)
        if not ys:
            raise ResultError(f"{results / name}/progress.csv: no charts/episodic_return in any update")
        config = json.loads(need(results / name / "config.json").read_text())
        ax.plot([x / 1e6 for x in xs], ys, lw=1.3, label=f"ours, seed {config['seed']}")


def gym_chart(results: Path, out: Path, args: Args) -> Path:
    """ppo_ddp_gym.py: each env's seeds against global steps, and CleanRL's published return (mean +- std over
    its 3 seeds) at the steps of its runs. Each command names the flags that differ from the script's defaults
    (its golden file)."""
    published = json.loads(need(results / "cleanrl_published.json").read_text())
    fig, axes = plt.subplots(1, len(GYM_RUNS), figsize=(5 * len(GYM_RUNS), 4), squeeze=False)
    lines = []
    for ax, (env_id, runs) in zip(axes[0], GYM_RUNS.items(), strict=True):
        seed_curves(ax, results, runs, args.window)
        ref = json.loads(need(results / runs[0] / "config.json").read_text())
        launch = f"torchrun --standalone --nproc-per-node={ref['world_size']} ppo_ddp_gym.py"
        defaults = {**json.loads((ROOT / "tests/golden/ppo_ddp_gym.json").read_text()), "seed": ref["seed"]}
        seeds = f" --seed 1..{len(runs)}" if len(runs) > 1 else ""
        lines.append(f"{env_id}: {launch} {flags(ref, defaults)}{seeds}")
        ours = max(x for line in ax.get_lines() for x in line.get_xdata())
        steps = published[env_id]["steps"] / 1e6
        for script, (mean, std) in ((k, v) for k, v in published[env_id].items() if k.endswith(".py")):
            label = f"CleanRL {script}: {mean:.1f} ± {std:.1f} at {steps:g}M"
            if steps <= 1.5 * ours:
                ax.errorbar([steps], [mean], yerr=[std], fmt="o", capsize=4, label=label)
            else:  # far beyond our run: named, not drawn (it would flatten our curve)
                ax.plot([], [], " ", label=label + " (off the chart)")
        ax.set_title(env_id, fontsize=10)
        ax.set_xlabel("environment steps (millions, all ranks)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")  # the curves rise: the lower right stays free
    axes[0][0].set_ylabel(f"episodic return ({args.window}-update moving average)")
    caption(fig, "\n".join(lines))
    fig.tight_layout(rect=(0, 0.04 + 0.03 * len(lines), 1, 1))
    return save(fig, out)


def cleanrl_curve(path: Path, update: int, window: int) -> tuple[list[float], list[float]]:
    """episode_curve of CleanRL's episodes (global step, return per episode), grouped into its updates."""
    rows = {}
    with open(need(path), newline="") as f:
        for r in csv.DictReader(f):
            rows.setdefault(-(-int(r["global_step"]) // update), []).append(float(r["episodic_return"]))
    updates = [
        {"global_step": u * update, "charts/episodes": len(v), "r": statistics.mean(v)}
        for u, v in sorted(rows.items())
    ]
    return episode_curve(updates, "r", window)


def continuous_chart(results: Path, out: Path, args: Args) -> Path:
    """ppo_ddp_continuous.py: each MuJoCo env's seeds, CleanRL's own script run here, CleanRL's published
    return (mean +- std over its 3 seeds) at 1M; then the ablation: normalization merged over the ranks
    against kept per rank, the returns and the largest gap between two ranks' reward scales."""
    published = json.loads(need(results / "cleanrl_published.json").read_text())
    panels = len(CONTINUOUS_RUNS) + 1
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.2), squeeze=False)
    lines = []
    for ax, (env_id, runs) in zip(axes[0], CONTINUOUS_RUNS.items(), strict=False):
        seed_curves(ax, results, runs, args.window)
        ref = json.loads(need(results / runs[0] / "config.json").read_text())
        seeds = f" --seed 1..{len(runs)}" if len(runs) > 1 else ""
        launch = f"torchrun --standalone --nproc-per-node={ref['world_size']} ppo_ddp_continuous.py"
        lines.append(f"{env_id}: {launch} --env-id {env_id}{seeds}")
        if env_id in CLEANRL_HERE:
            update = ref["global_batch_size"]
            xs, ys = cleanrl_curve(results / CLEANRL_HERE[env_id] / "episodes.csv", update, args.window)
            ax.plot(
                [x / 1e6 for x in xs], ys, lw=1.3, color="0.4", ls="--", label="CleanRL's script here, seed 1"
            )
            lines.append(
                f"CleanRL: python ppo_continuous_action.py --env-id {env_id} --seed 1 (commit fe8d8a0)"
            )
        mean, std = published[env_id]["ppo_continuous_action.py"]
        steps = published[env_id]["steps"] / 1e6
        label = f"CleanRL published: {mean:.0f} ± {std:.0f} at {steps:g}M"
        ax.errorbar([steps], [mean], yerr=[std], fmt="o", color="k", capsize=4, label=label)
        ax.set_title(env_id, fontsize=10)
        ax.set_xlabel("environment steps (millions, all ranks)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel(f"episodic return ({args.window}-update moving average)")
    ax = axes[0][-1]
    gaps = ax.twinx()
    for (name, label), color in zip(ABLATION_RUNS.items(), ("C0", "C3"), strict=True):
        rows = read_progress(results / name)
        xs, ys = episode_curve(rows, "charts/episodic_return", args.window)
        ax.plot([x / 1e6 for x in xs], ys, lw=1.3, color=color, label=f"return, statistics {label}")
        gap = [float(r["norm/return_std_spread"]) / float(r["norm/return_std"]) for r in rows]
        gaps.plot([int(r["global_step"]) / 1e6 for r in rows], gap, lw=0.8, color=color, ls=":", alpha=0.8)
    gaps.set_ylabel("dotted: largest gap between two ranks' reward scales / the scale (log)", fontsize=7)
    gaps.set_yscale("symlog", linthresh=1e-4)  # merged statistics: exactly 0
    ax.set_title("Hopper-v4, seed 1: the normalization statistics", fontsize=10)
    ax.set_xlabel("environment steps (millions, all ranks)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    lines.append("ablation: the Hopper command with --no-norm-sync")
    caption(fig, "\n".join(lines))
    fig.tight_layout(rect=(0, 0.03 + 0.025 * len(lines), 1, 1))
    return save(fig, out)


def benchmark_chart(results: Path, out: Path) -> Path:
    """benchmark_ddp.py: ms per iteration of each approach with its 95% CI, split into phases."""
    bench = json.loads(need(results / "bench_ddp.json").read_text())
    ok = {k: v for k, v in bench["approaches"].items() if v["status"] == "ok"}
    failed = [k for k, v in bench["approaches"].items() if v["status"] != "ok"]
    phases = [p for p in next(iter(ok.values()))["phases"] if p != "total"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1, 1.3]})
    names = list(ok)
    totals = [ok[k]["phases"]["total"] for k in names]
    err = [[t["mean"] - t["ci95"][0] for t in totals], [t["ci95"][1] - t["mean"] for t in totals]]
    ax.barh(range(len(names)), [t["mean"] for t in totals], xerr=err, capsize=4, color="tab:blue", alpha=0.8)
    for i, (k, t) in enumerate(zip(names, totals, strict=True)):
        ratio = "baseline" if k == bench["baseline"] else f"{t['ratio'] - 1:+.1%}, {t['verdict']}"
        ax.text(t["ci95"][1], i, f"  {t['mean']:.1f} ms ({ratio})", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), [BENCH_LABELS.get(k, k) for k in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(t["ci95"][1] for t in totals) * 1.6)
    ax.set_xlabel("ms per iteration (mean, 95% CI)")
    ax.set_title("one DDP iteration, slowest rank")
    left = [0.0] * len(names)
    for p in phases:
        widths = [ok[k]["phases"][p]["mean"] for k in names]
        bx.barh(range(len(names)), widths, left=left, label=p)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    bx.set_yticks(range(len(names)), [""] * len(names))
    bx.invert_yaxis()
    bx.set_xlabel("ms per iteration, by phase (means)")
    bx.legend(fontsize=7, ncol=len(phases), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    m, a = bench["machine"], bench["args"]
    caption(
        fig,
        f"torchrun --standalone --nproc-per-node={m['world_size']} benchmark_ddp.py: {m['device_name']}, "
        f"{m['backend']}, {m['world_size']} ranks x {m['threads_per_rank']} thread, torch {m['torch']}, "
        f"{m['date'][:10]}; {a['iterations']} iterations per approach "
        f"in interleaved blocks of {a['block_size']}. "
        f"Not timed, they fail: {', '.join(BENCH_LABELS.get(k, k) for k in failed) or 'none'}.",
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save(fig, out)


def scaling_chart(results: Path, out: Path) -> Path:
    """bench_scaling.py: global steps/s of each arm, median and every round, for each script measured."""
    files = sorted(results.glob("scaling_*.json"))
    if not files:
        raise ResultError(
            f"{results}/scaling_*.json: none (results/README.md says which command writes them)"
        )
    found = {f.stem: json.loads(f.read_text()) for f in files}
    fig, axes = plt.subplots(1, len(found), figsize=(5 * len(found), 4), squeeze=False)
    notes = []
    for ax, res in zip(axes[0], found.values(), strict=True):
        arms = list(res["sps"])
        meds = [statistics.median(res["sps"][a]) for a in arms]
        ax.bar(range(len(arms)), [m / 1e3 for m in meds], color=["0.6", "tab:green", "tab:blue"][: len(arms)])
        for i, a in enumerate(arms):
            ax.plot([i] * len(res["sps"][a]), [v / 1e3 for v in res["sps"][a]], "k.", ms=5)
            ax.text(
                i, meds[i] / 2e3, f"{meds[i] / 1e3:.0f}k", ha="center", va="center", fontsize=9, color="w"
            )
        ratio = statistics.median(res["ratios"]["DDP / 1 rank"])
        ax.set_xticks(range(len(arms)), arms, fontsize=8)
        ax.set_ylabel("global env steps/s (thousands)")
        ax.set_title(f"{res['args']['script']}: 2 DDP ranks = {ratio:.2f}x one rank", fontsize=10)
        machine = res.get("machine", {})
        notes.append(
            f"python bench_scaling.py --script {res['args']['script']} --rounds {res['args']['rounds']}: "
            f"{machine.get('cpu', '?')}, {machine.get('date', '?')[:10]}"
        )
    caption(fig, "bars: medians over rounds, dots: each round.  " + "; ".join(notes))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save(fig, out)


def tune_chart(results: Path, out: Path, study: str = "tune_arena") -> Path:
    """tune.py's study: each trial's objective (pruned ones at their last reported value), the best so far."""
    with open(need(results / study / "trials.csv"), newline="") as f:
        trials = list(csv.DictReader(f))
    done = [(int(t["number"]), float(t["value"])) for t in trials if t["state"] == "COMPLETE"]
    cut = [(int(t["number"]), float(t["last_intermediate"])) for t in trials if t["state"] == "PRUNED"]
    if not done:
        raise ResultError(f"{results / study}/trials.csv: no completed trial")
    fig, ax = plt.subplots(figsize=(8, 4.4))
    ax.scatter(*zip(*done, strict=True), color="tab:blue", label="completed", zorder=3)
    if cut:
        ax.scatter(
            *zip(*cut, strict=True), color="tab:red", marker="x", label="pruned (its last reported value)"
        )
    best = [max(v for n, v in done if n <= k) for k, _ in done]
    ax.step([n for n, _ in done], best, where="post", color="tab:green", label="best so far")
    first = next(t for t in trials if t["state"] == "COMPLETE")
    ax.annotate("the defaults", (int(first["number"]), float(first["value"])), textcoords="offset points",
                xytext=(8, -12), fontsize=8)  # fmt: skip
    config = json.loads(need(results / study / "study.json").read_text())
    ax.set(xlabel="trial", ylabel=f"{config['metric']}, mean over the last 10% of updates")
    ran, steps = sum(t["state"] != "WAITING" for t in trials), config["total_timesteps"] / 1e6
    ax.set_title(
        f"tune.py, study {config['study_name']}: {ran} trials of {steps:g}M steps, {len(done)} completed"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    caption(fig, config["command"])
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save(fig, out)


def save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)  # a reader never sees half an image
    return out


def main() -> int:
    args = tyro.cli(Args)
    results, out = Path(args.results), Path(args.out_dir)
    try:
        made = [
            learning_curves(
                results, out / "snake_curve.png", SNAKE_RUNS, "snake", "snake/apples", "Snake", args
            ),
            learning_curves(
                results,
                out / "arena_curves.png",
                ARENA_RUNS,
                "arena",
                "arena/hearts",
                "Arena: ablations of the earlier defaults",
                args,
                reference=DEFAULTS_RUN,
            ),
            learning_curves(
                results,
                out / "arena_memory.png",
                MEMORY_RUNS,
                "memory",
                "arena/hearts",
                "Arena, partially observed: memory (--agent lstm) against none",
                args,
                reference=DEFAULTS_RUN,
                style=MEMORY_STYLE,
            ),
            gym_chart(results, out / "gym_returns.png", args),
            continuous_chart(results, out / "continuous_returns.png", args),
            tune_chart(results, out / "tune_arena.png"),
            learning_curves(
                results,
                out / "arena_tuned.png",
                TUNED_RUNS,
                "arena",
                "arena/hearts",
                "Arena: tune.py's flags (the defaults now) against the earlier defaults, 40M steps",
                args,
                reference=DEFAULTS_RUN,
                style=TUNED_STYLE,
            ),
            benchmark_chart(results, out / "benchmark_ddp.png"),
            scaling_chart(results, out / "scaling.png"),
        ]
    except ResultError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in made:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
