"""benchmark_ddp.py: a short real run under torchrun (2 ranks, gloo); the figures' structure, never speed."""

import json

import pytest
from helpers import explain, python, torchrun

import plots

PHASES = ("zero_grad", "forward", "loss_compute", "backward", "optimizer", "total")
TINY = ("--warmup", "3", "--batch-size", "16", "--obs-dim", "16", "--hidden-dim", "16")
TINY += ("--action-dim", "4", "--aux-dim", "4")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench_ddp.json"
    p = torchrun("benchmark_ddp.py", *TINY, "--iterations", "6", "--block-size", "2", "--json-out", str(out))
    assert p.returncode == 0, explain(p)
    return p, json.loads(out.read_text())


def check_timed(r: dict, iterations: int, world_size: int) -> None:
    assert r["status"] == "ok" and r["replicas_identical"], r.get("grads")
    assert set(r["phases"]) == set(PHASES)
    for phase, s in r["phases"].items():
        assert min(s["mean"], s["median"], s["std"], s["ratio"], *s["ci95"], *s["ratio_ci95"]) > 0, (phase, s)
        assert s["ci95"][0] <= s["mean"] <= s["ci95"][1], (phase, s)
        assert s["ratio_ci95"][0] <= s["ratio"] <= s["ratio_ci95"][1], (phase, s)
        assert s["verdict"] in ("baseline", "faster", "slower") or s["verdict"].startswith("no significant")
        assert len(r["iterations_ms"][phase]) == iterations
    assert len(r["per_rank_total_mean_ms"]) == world_size


def test_the_readme_chart_is_drawn_from_the_json(run, tmp_path):
    (tmp_path / "bench_ddp.json").write_text(json.dumps(run[1]))
    assert plots.benchmark_chart(tmp_path, tmp_path / "benchmark_ddp.png").stat().st_size > 10_000


def test_json_holds_every_approach_phase_and_statistic(run):
    _, d = run
    assert list(d["approaches"]) == ["find_unused", "hack", "all_used", "static_graph", "none"]
    assert d["baseline"] == "find_unused" and d["approaches"]["find_unused"]["phases"]["total"]["ratio"] == 1
    assert d["machine"]["world_size"] == 2 and d["machine"]["backend"] == "gloo"
    for name in ("find_unused", "hack", "all_used"):
        check_timed(d["approaches"][name], iterations=6, world_size=2)
    sg = d["approaches"]["static_graph"]  # torch 2.13 rejects it here (outputs returned, unused by the loss)
    if sg["status"] == "ok":
        check_timed(sg, iterations=6, world_size=2)
    else:
        assert "Expected to have finished reduction" in sg["error"]


def test_none_is_reported_failing_and_not_timed(run):
    _, d = run
    none = d["approaches"]["none"]
    assert none["status"] == "failed" and "phases" not in none
    assert none["error"].startswith(
        "RuntimeError: Expected to have finished reduction in the prior iteration"
    )
    assert none["failed_at_iteration"] == 2


def test_grad_census_explains_the_optimizer_phase(run):
    _, d = run
    fu, hack, used = (d["approaches"][n]["grads"] for n in ("find_unused", "hack", "all_used"))
    unused = 4 + 2 * 2  # critic (2 Linear) and 2 aux heads: weight + bias each
    fu_counts = (fu["grad_none"], fu["grad_zero"], fu["stepped_tensors"])
    assert fu_counts == (unused, 0, fu["param_tensors"] - unused)
    hack_counts = (hack["grad_none"], hack["grad_zero"], hack["stepped_tensors"])
    assert hack_counts == (0, unused, hack["param_tensors"])
    assert (used["grad_none"], used["grad_nonzero"]) == (0, used["param_tensors"])


def test_tables_print_once(run):
    p, _ = run
    for header in (
        "| Approach | Time (ms/iter) | 95% CI |",
        "| Phase (ms, mean) |",
        "| Approach | param tensors |",
    ):
        assert p.stdout.count(header) == 1, explain(p)  # rank 0 only
    assert p.stdout.count("Machine: device cpu") == 1 and "world size 2" in p.stdout
    assert "| no fix | fails (iteration 2) |" in p.stdout
    for phase in PHASES:
        assert f"| {phase} | " in p.stdout


def test_world_size_one_without_launcher(tmp_path):
    out = tmp_path / "bench.json"
    args = ("--approaches", "hack", "find_unused", "none", "--iterations", "4", "--block-size", "2")
    p = python("benchmark_ddp.py", *TINY, *args, "--json-out", str(out), timeout=120)
    assert p.returncode == 0, explain(p)
    d = json.loads(out.read_text())
    assert d["machine"]["world_size"] == 1 and d["baseline"] == "find_unused"
    assert d["approaches"]["none"]["status"] == "failed"
    check_timed(d["approaches"]["hack"], iterations=4, world_size=1)
    assert "| `0.0 * sum()` hack |" in p.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("--approaches", "bogus"),
        ("--approaches", "hack", "hack"),
        ("--iterations", "0"),
        ("--batch-size", "-1"),
        ("--iterations", "5", "--block-size", "2"),
        ("--warmup", "1"),
    ],
)
def test_bad_arguments_exit_2(args):
    p = python("benchmark_ddp.py", *args, timeout=60)
    assert p.returncode == 2, explain(p)
    assert p.stderr.startswith("benchmark_ddp.py: error: ") and p.stderr.count("\n") == 1, explain(p)
    assert "Traceback" not in p.stderr and not p.stdout


def test_bad_arguments_under_torchrun_stop_every_rank():
    p = torchrun("benchmark_ddp.py", "--approaches", "bogus", timeout=60)
    assert p.returncode != 0, explain(p)
    assert "benchmark_ddp.py: error: unknown approach 'bogus'" in p.stderr, explain(p)
    assert "exitcode  : 2" in p.stderr, explain(p)  # torchrun's report of the workers' exit code
