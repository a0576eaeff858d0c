"""bench_scaling.py: one short round of every arm on tiny Snake runs; the figures' structure, never speed."""

import json

import pytest
from helpers import explain, progress, python

import plots

TINY = "--num-steps 32 --hidden-size 32"


@pytest.mark.slow
def test_one_round_runs_every_arm_and_reports_consistent_ratios(tmp_path):
    out, result = tmp_path / "runs", tmp_path / "scaling.json"
    p = python(
        "bench_scaling.py",
        "--rounds=1",
        "--steps-per-process=16384",  # 8 updates of 2048 steps per process
        "--skip=2",
        "--num-envs=64",
        f"--extra={TINY}",
        f"--out-dir={out}",
        f"--json-out={result}",
        timeout=300,
    )
    assert p.returncode == 0, explain(p)
    d = json.loads(result.read_text())
    sps, ratios = d["sps"], d["ratios"]
    assert list(sps) == ["1 rank", "2 independent", "2 ranks DDP"]
    assert all(len(v) == 1 and v[0] > 0 for v in sps.values())
    assert ratios["DDP / 1 rank"][0] == pytest.approx(sps["2 ranks DDP"][0] / sps["1 rank"][0])
    assert ratios["DDP / independent"][0] == pytest.approx(sps["2 ranks DDP"][0] / sps["2 independent"][0])
    for run, world_size, seed, steps in [
        ("1_rank", 1, 1, 16384),
        ("2_independent_0", 1, 1, 16384),
        ("2_independent_1", 1, 2, 16384),
        ("2_ranks_DDP", 2, 1, 32768),  # the same steps per process in every arm
    ]:
        config = json.loads((out / "runs" / run / "config.json").read_text())
        launched = (config["world_size"], config["seed"], config["total_timesteps"])
        assert launched == (world_size, seed, steps), run
        assert (config["num_envs"], config["num_steps"], config["hidden_size"]) == (64, 32, 32), run
        assert len(progress(out / "runs" / run)) == 8, run
    assert "DDP / 1 rank" in p.stdout and "2 independent" in p.stdout
    assert d["machine"]["cpu"] and d["machine"]["cpus"] >= 2 and d["machine"]["date"].startswith("20")
    result.rename(tmp_path / "scaling_snake.json")  # the README's chart, drawn from this JSON
    assert plots.scaling_chart(tmp_path, tmp_path / "scaling.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--rounds=0"], "--rounds, --steps-per-process and --num-envs must be positive"),
        (["--script=nope.py"], "no such file"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(flags, message, tmp_path):
    p = python("bench_scaling.py", *flags, f"--out-dir={tmp_path / 'runs'}")
    assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, explain(p)
    assert not (tmp_path / "runs").exists()  # nothing written before the check
