"""plots.py draws every chart of the README and its pages from what the scripts write: fresh small runs and
baselines made here, and the results/ directory the charts come from."""

import re
import shutil

import pytest
from helpers import ROOT, python

from plots import (
    ABLATION_RUNS,
    ARENA_RUNS,
    CLEANRL_HERE,
    CONTINUOUS_RUNS,
    GYM_RUNS,
    MEMORY_RUNS,
    SNAKE_RUNS,
    TUNED_RUNS,
    flags,
)

CHARTS = [
    "snake_curve.png",
    "arena_curves.png",
    "arena_memory.png",
    "gym_returns.png",
    "continuous_returns.png",
    "tune_arena.png",
    "arena_tuned.png",
    "benchmark_ddp.png",
    "scaling.png",
]
TINY = ["--num-envs=16", "--num-steps=32", "--total-timesteps=2048", "--hidden-size=16", "--eval-interval=0"]


def is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


@pytest.fixture(scope="module")
def small_results(tmp_path_factory):
    """A results directory as results/README.md describes it, from 4-update single-process runs of the scripts
    (Arena episodes cut to 32 steps so that some end; CartPole standing in for every Gymnasium run, Pendulum
    for every MuJoCo run) and 2-episode baselines; the benchmark JSONs, CleanRL's published returns and its
    episodes run here are results/'s."""
    tmp = tmp_path_factory.mktemp("plots")
    res = tmp / "results"
    (res / "baselines").mkdir(parents=True)
    for script, name, extra in (
        ("ppo_ddp_snake.py", "snake_default", []),
        ("ppo_ddp.py", "arena_default", ["--episode-length=32"]),
        ("ppo_ddp_gym.py", "gym_CartPole_s1", []),
        (
            "ppo_ddp_continuous.py",
            "cont_Pendulum",
            ["--env-id=Pendulum-v1", "--num-envs=2", "--num-steps=256"],
        ),
    ):
        p = python(script, *TINY, *extra, f"--run-name={name}", cwd=tmp, timeout=120)
        assert p.returncode == 0, p.stderr
        shutil.copytree(tmp / "runs" / name, res / name)
    for name in [*ARENA_RUNS, *MEMORY_RUNS, *TUNED_RUNS]:  # the other Arena runs: the one small run stands in
        if name != "arena_default":
            shutil.copytree(res / "arena_default", res / name)
    for name in (n for runs in GYM_RUNS.values() for n in runs if n != "gym_CartPole_s1"):
        shutil.copytree(res / "gym_CartPole_s1", res / name)
    for name in {*(n for runs in CONTINUOUS_RUNS.values() for n in runs), *ABLATION_RUNS}:
        shutil.copytree(res / "cont_Pendulum", res / name)
    for name in CLEANRL_HERE.values():
        shutil.copytree(ROOT / "results" / name, res / name)
    for script, policy, extra in (
        ("ppo_ddp_snake", "random", []),
        ("ppo_ddp", "random", ["--episode-length=32"]),
        ("ppo_ddp", "teacher", ["--episode-length=32"]),
    ):
        out = res / "baselines" / f"{script}_{policy}.json"
        p = python(
            f"{script}.py", f"--baseline={policy}", "--eval-episodes=2", *extra, f"--eval-json={out}", cwd=tmp
        )
        assert p.returncode == 0 and out.is_file(), p.stderr
    # the partially observed setting's levels: the default room's stand in
    for policy in ("teacher", "random"):
        shutil.copy(
            res / "baselines" / f"ppo_ddp_{policy}.json", res / "baselines" / f"ppo_ddp_po_{policy}.json"
        )
    for f in [
        "bench_ddp.json",
        "cleanrl_published.json",
        *(f.name for f in (ROOT / "results").glob("scaling_*.json")),
    ]:
        shutil.copy(ROOT / "results" / f, res / f)
    # tune.py's study: trials.csv, study.json
    shutil.copytree(ROOT / "results/tune_arena", res / "tune_arena")
    return res


@pytest.mark.slow
def test_plots_draws_every_chart_from_fresh_runs(small_results, tmp_path):
    p = python("plots.py", f"--results={small_results}", f"--out-dir={tmp_path}", "--window=2", timeout=120)
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(CHARTS)
    assert all(is_png(tmp_path / c) for c in CHARTS)


def test_plots_names_what_is_missing_and_exits_2(small_results, tmp_path):
    """A run without episode metrics, or a missing result: one error line naming it, exit 2, no chart made."""
    broken = tmp_path / "results"
    shutil.copytree(small_results, broken)
    csv = broken / "arena_grpo/progress.csv"
    csv.write_text(re.sub(r"arena/hearts", "arena/renamed", csv.read_text()))
    p = python("plots.py", f"--results={broken}", f"--out-dir={tmp_path / 'out'}", timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == f"error: {broken}/arena_grpo/progress.csv: no arena/hearts in any update"
    (broken / "baselines/ppo_ddp_teacher.json").unlink()
    shutil.copy(small_results / "arena_grpo/progress.csv", csv)
    p = python("plots.py", f"--results={broken}", f"--out-dir={tmp_path / 'out'}", timeout=120)
    assert p.returncode == 2 and "baselines/ppo_ddp_teacher.json: missing" in p.stderr
    assert not (tmp_path / "out" / "arena_curves.png").exists()


def test_the_readme_charts_come_from_results(tmp_path):
    """Every chart is drawn from the committed results/ into docs/img/ and shown in the README or one of its
    pages, and every run a chart names is there."""
    p = python("plots.py", f"--out-dir={tmp_path}", timeout=120)
    assert p.returncode == 0, p.stderr
    readme = (ROOT / "README.md").read_text()
    docs = "".join(f.read_text() for f in sorted((ROOT / "docs").glob("*.md")))
    for chart in CHARTS:
        assert is_png(tmp_path / chart) and is_png(ROOT / "docs/img" / chart)
        shown = f"(docs/img/{chart})" in readme or f"(img/{chart})" in docs
        assert shown, f"{chart} is shown neither in README.md nor in docs/"
    for name in [
        *SNAKE_RUNS,
        *ARENA_RUNS,
        *MEMORY_RUNS,
        *TUNED_RUNS,
        *(n for runs in GYM_RUNS.values() for n in runs),
        *(n for runs in CONTINUOUS_RUNS.values() for n in runs),
        *ABLATION_RUNS,
    ]:
        assert (ROOT / "results" / name / "progress.csv").is_file() and f"`{name}/`" in (
            ROOT / "results/README.md"
        ).read_text()


def test_a_chart_names_each_run_by_the_flags_its_config_differs_in():
    reference = {
        "run_name": "a",
        "loss": "ppo",
        "reward_shaping": True,
        "compile": False,
        "print_interval": 60.0,
    }
    run = {"run_name": "b", "loss": "grpo", "reward_shaping": False, "compile": True, "print_interval": 10.0}
    assert flags(reference, reference) == ""
    # print_interval: not training
    assert flags(run, reference) == "--loss grpo --no-reward-shaping --compile"
