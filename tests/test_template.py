"""One template: the distributed machinery of the PPO scripts, from their one `TRY NOT TO MODIFY` line to the end,
is byte-identical, so a fix reaches every script and a copy knows what is its to change. The same check by hand:
    diff <(sed -n '/TRY NOT TO MODIFY/,$p' ppo_ddp_snake.py) <(sed -n '/TRY NOT TO MODIFY/,$p' ppo_ddp.py)
"""

import difflib

from helpers import ROOT

SCRIPTS = ("ppo_ddp_snake.py", "ppo_ddp.py")


def machinery(script: str) -> list[str]:
    lines = (ROOT / script).read_text().splitlines(keepends=True)
    marked = [i for i, line in enumerate(lines) if "TRY NOT TO MODIFY" in line]
    assert len(marked) == 1, f"{script}: {len(marked)} lines hold TRY NOT TO MODIFY, not exactly one"
    return lines[marked[0] :]


def test_the_machinery_below_the_marked_line_is_byte_identical():
    first, second = (machinery(s) for s in SCRIPTS)
    diff = "".join(difflib.unified_diff(first, second, *SCRIPTS, n=1))
    assert not diff, f"the machinery differs:\n{diff[:4000]}"
