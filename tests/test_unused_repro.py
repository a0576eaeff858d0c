"""test_unused_params.py: the DDP unused-parameter failure and its fixes, run for real under torchrun."""

import pytest
import torch
from helpers import explain, python, torchrun

import test_unused_params as repro

UNUSED = ["critic.weight", "critic.bias", "aux.weight", "aux.bias"]


def verdict(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(("✅", "❌")))


@pytest.mark.parametrize(
    "flags, code, grad",
    [
        ([], 0, "zeros"),  # the hack: unused heads get gradients of zeros
        (["--no-hack", "--find-unused"], 0, "None"),  # find_unused: their gradients stay None
        (["--static-graph"], 0, "zeros"),
    ],
)
def test_fix_succeeds_with_identical_weights(flags, code, grad):
    p = torchrun("test_unused_params.py", *flags, timeout=120)
    assert p.returncode == code, explain(p)
    assert verdict(p.stdout).startswith("✅ SUCCESS") and "5 iterations; world size 2" in p.stdout
    assert "parameters identical on all 2 ranks: yes" in p.stdout
    for name in UNUSED:
        assert f"{name}.grad: {grad}" in p.stdout, explain(p)


@pytest.mark.parametrize("flags", [["--no-hack"], ["--no-hack", "--static-graph"]])
def test_no_fix_fails_and_names_the_parameters(flags):
    p = torchrun("test_unused_params.py", *flags, timeout=120)
    assert p.returncode == 1, explain(p)
    line = verdict(p.stdout)
    assert line.startswith("❌ RuntimeError: Expected to have finished reduction in the prior iteration"), (
        line
    )
    assert f"parameters that received no gradient: {', '.join(UNUSED)}" in p.stdout
    assert "--find-unused" in p.stdout and "hack" in p.stdout


def test_world_size_one_fails_too():
    p = python("test_unused_params.py", "--no-hack", timeout=60)
    assert p.returncode == 1, explain(p)
    assert verdict(p.stdout).startswith("❌ RuntimeError: Expected to have finished reduction")


@pytest.mark.slow
def test_all_runs_each_scenario_and_compares_it_with_its_expected_verdict(monkeypatch, capsys):
    """--all's table, on two scenarios (each of the five runs alone in the tests above, which check more): a
    scenario that ends as expected matches, one expected to succeed that fails is a mismatch, exit code 1."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(repro, "SCENARIOS", [([], "SUCCESS"), (["--no-hack"], "SUCCESS")])
    assert repro.run_all(repro.Args(), nproc=2) == 1
    out = capsys.readouterr().out
    assert out.count("✅") == 1 and out.count("❌") == 1 and "MISMATCH: see the table" in out, out


def test_bad_iterations_exit_2_with_one_line():
    p = python("test_unused_params.py", "--iterations", "1", timeout=60)
    assert p.returncode == 2, explain(p)
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error: --iterations")


def test_unused_parameter_names_found_by_autograd():
    model = repro.ActorCritic()
    batch = repro.synthetic_batch(torch.Generator().manual_seed(0), torch.device("cpu"))
    assert repro.unused_parameter_names(model, batch, hack=False) == UNUSED
    assert repro.unused_parameter_names(model, batch, hack=True) == []  # the hack touches every output
