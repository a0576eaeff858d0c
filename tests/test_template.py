"""One template: the distributed machinery of the PPO scripts, from their one `TRY NOT TO MODIFY` line to the end,
is byte-identical, so a fix reaches every script and a copy knows what is its to change. The same check by hand:
    diff <(sed -n '/TRY NOT TO MODIFY/,$p' ppo_ddp_snake.py) <(sed -n '/TRY NOT TO MODIFY/,$p' ppo_ddp.py)
"""

import difflib

from helpers import ROOT

SCRIPTS = sorted(p.name for p in ROOT.glob("ppo_ddp*.py"))  # every PPO script, however many


def machinery(script: str) -> list[str]:
    lines = (ROOT / script).read_text().splitlines(keepends=True)
    marked = [i for i, line in enumerate(lines) if "TRY NOT TO MODIFY" in line]
    assert len(marked) == 1, f"{script}: {len(marked)} lines hold TRY NOT TO MODIFY, not exactly one"
    return lines[marked[0] :]


def test_the_machinery_below_the_marked_line_is_byte_identical():
    assert len(SCRIPTS) >= 3 and "ppo_ddp_snake.py" in SCRIPTS, SCRIPTS
    template = machinery("ppo_ddp_snake.py")
    for script in SCRIPTS:
        diff = "".join(difflib.unified_diff(template, machinery(script), "ppo_ddp_snake.py", script, n=1))
        assert not diff, f"the machinery of {script} differs from the template's:\n{diff[:4000]}"
