"""Every script's resolved default Args, frozen in tests/golden/. A changed default fails here until its golden
file changes in the same commit, so no refactor changes a default silently (seed 004). To accept a change:
    python tests/test_golden_defaults.py
"""

import dataclasses
import importlib
import json
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"
SCRIPTS = ["ppo_ddp_snake", "ppo_ddp", "benchmark_ddp", "test_unused_params"]


def defaults(script: str) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(importlib.import_module(script).Args())))


@pytest.mark.parametrize("script", SCRIPTS)
def test_defaults_match_golden(script):
    golden = json.loads((GOLDEN / f"{script}.json").read_text())
    now = defaults(script)
    changed = {k: (golden.get(k), now.get(k)) for k in golden.keys() | now.keys() if golden.get(k) != now.get(k)}
    assert not changed, f"defaults of {script}.py changed (golden, now): {changed}; see this file's docstring"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    for script in SCRIPTS:
        (GOLDEN / f"{script}.json").write_text(json.dumps(defaults(script), indent=2, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN / script}.json")
