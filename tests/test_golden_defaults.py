"""Every script's defaults, frozen in tests/golden/: its Args, its command-line flags, and for the PPO scripts
the configuration a run resolves them to (config.json of a 2-rank CPU run at the defaults, `--num-envs 0`
included, stopped with Ctrl-C once it has written it). A changed default, flag or resolution fails here until
its golden file changes in the same commit, so no refactor changes a default silently (seed 004). To accept
a change:
    python tests/test_golden_defaults.py
"""

import dataclasses
import importlib
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest

if __name__ == "__main__":  # run as a script: the scripts and tests/support, as conftest.py puts them
    sys.path[:0] = [
        str(Path(__file__).resolve().parents[1]),
        str(Path(__file__).resolve().parent / "support"),
    ]
from helpers import explain, finish, python, start, torchrun_cmd  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
PPO = sorted(p.stem for p in Path(__file__).resolve().parents[1].glob("ppo_ddp*.py"))
SCRIPTS = [*PPO, "benchmark_ddp", "test_unused_params", "tune"]
# 409,600 steps: --num-envs 0 resolves to 16 per rank (the most leaving 100 updates of 2 x 16 x num_steps)
# where the envs step on the device; where they step on the CPU, to its share of the cores
# (the run keeps to 2 of them)
RESOLVE = ["--total-timesteps=409600", "--run-name=golden"]


def defaults(script: str) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(importlib.import_module(script).Args())))


def flags(script: str) -> list[str]:
    """The flags `--help` lists (its option column), on a terminal wide enough not to wrap."""
    p = python(f"{script}.py", "--help", timeout=60, COLUMNS="400")
    assert p.returncode == 0, explain(p)
    found = set()
    for line in p.stdout.splitlines():
        line = line.strip("│ ")
        if line.startswith("-"):
            found.update(re.findall(r"(?<![\w-])--?[a-z][a-z0-9-]*", line.split("  ")[0]))
    return sorted(found)


def resolved_config(script: str, cwd: Path) -> dict:
    """config.json of a run at the defaults, without what depends on the machine (host, CPUs, torch version).
    The run stops once it is written: the resolution happens before training."""
    cmd = ["taskset", "-c", "0,1", *torchrun_cmd(f"{script}.py", *RESOLVE)]  # the same cores on any machine
    proc, path = start(cmd, cwd=cwd), cwd / "runs/golden/config.json"
    deadline = time.time() + 120
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    p = finish(proc, 60)
    assert path.exists(), explain(p)
    config = json.loads(path.read_text())
    del config["torch_version"]
    config["ranks"] = [{k: v for k, v in r.items() if k not in ("host", "cpus")} for r in config["ranks"]]
    return config


def differences(golden: dict, now: dict) -> dict:
    return {k: (golden.get(k), now.get(k)) for k in golden.keys() | now.keys() if golden.get(k) != now.get(k)}


@pytest.mark.parametrize("script", SCRIPTS)
def test_defaults_match_golden(script):
    changed = differences(json.loads((GOLDEN / f"{script}.json").read_text()), defaults(script))
    assert not changed, f"defaults of {script}.py changed (golden, now): {changed}; see this file's docstring"


@pytest.mark.parametrize("script", PPO)
def test_flags_match_golden(script):
    golden = json.loads((GOLDEN / f"{script}.flags.json").read_text())
    assert flags(script) == golden, f"flags of {script}.py changed; see this file's docstring"


@pytest.mark.parametrize("script", PPO)
def test_resolved_config_matches_golden(script, tmp_path):
    golden = json.loads((GOLDEN / f"{script}.config.json").read_text())
    changed = differences(golden, resolved_config(script, tmp_path))
    assert not changed, (
        f"{script}.py resolves its defaults otherwise (golden, now): {changed}; see the docstring"
    )


if __name__ == "__main__":
    for script in SCRIPTS:
        (GOLDEN / f"{script}.json").write_text(json.dumps(defaults(script), indent=2, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN / script}.json")
    for script in PPO:
        (GOLDEN / f"{script}.flags.json").write_text(json.dumps(flags(script), indent=2) + "\n")
        with tempfile.TemporaryDirectory() as tmp:
            config = resolved_config(script, Path(tmp))
        (GOLDEN / f"{script}.config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN / script}.flags.json and .config.json")
