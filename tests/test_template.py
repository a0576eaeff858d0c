"""One template: the operations of the PPO scripts, from their one `TRY NOT TO MODIFY` line to the end, are
byte-identical, so a fix reaches every script and a copy knows what is its to change; and the contract comment
above the line lists exactly the names of the script's own part that the operations use. By hand:
    diff <(sed -n '/TRY NOT TO MODIFY/,$p' ppo_ddp_snake.py) <(sed -n '/TRY NOT TO MODIFY/,$p' ppo_ddp.py)
"""

import ast
import difflib
import re

import pytest
from helpers import ROOT

SCRIPTS = sorted(p.name for p in ROOT.glob("ppo_ddp*.py"))  # every PPO script, however many


def split(script: str) -> tuple[str, str]:
    """(the script's own part, the operations from the marked line on)."""
    lines = (ROOT / script).read_text().splitlines(keepends=True)
    marked = [i for i, line in enumerate(lines) if "TRY NOT TO MODIFY" in line]
    assert len(marked) == 1, f"{script}: {len(marked)} lines hold TRY NOT TO MODIFY, not exactly one"
    return "".join(lines[: marked[0]]), "".join(lines[marked[0] :])


def test_the_operations_below_the_marked_line_are_byte_identical():
    assert len(SCRIPTS) >= 3 and "ppo_ddp_snake.py" in SCRIPTS, SCRIPTS
    template = split("ppo_ddp_snake.py")[1].splitlines(keepends=True)
    for script in SCRIPTS:
        ops = split(script)[1].splitlines(keepends=True)
        diff = "".join(difflib.unified_diff(template, ops, "ppo_ddp_snake.py", script, n=1))
        assert not diff, f"the operations of {script} differ from the template's:\n{diff[:4000]}"


def defined(own: str) -> set[str]:
    """The names the script's own part defines at module level: functions, classes, assignments."""
    names = set()
    for node in ast.parse(own).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_contract_comment_lists_what_the_operations_use(script):
    """Every name of the script's own part that the operations below the line use is listed in the comment
    that begins `# Yours to edit`, and the comment lists no other of the part's names: the contract a copy
    must keep is the one written down."""
    own, ops = split(script)
    names = defined(own)
    used = {n.id for n in ast.walk(ast.parse(ops)) if isinstance(n, ast.Name) and n.id in names}
    comment = re.search(r"^# Yours to edit.*?\n(?!#)", own, re.S | re.M)
    assert comment, f"{script}: no comment beginning '# Yours to edit' above the line"
    listed = set(re.findall(r"\b[A-Za-z_]\w*\b", comment.group(0))) & names
    assert used == listed, (
        f"{script}: used, not listed: {sorted(used - listed)}; listed, unused: {sorted(listed - used)}"
    )
