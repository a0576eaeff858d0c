"""CI runs what the README tells a user to run: the ci:test block and the command in .ci/run are the same."""

import re

from helpers import ROOT


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- ci:test -->\n```bash\n(.+?)\n```\n<!-- /ci:test -->", readme, re.S)
    assert block, "README.md has no ci:test block"
    ci = [
        line
        for line in (ROOT / ".ci/run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd ", "export "))
    ]
    assert ci == [block.group(1).strip()]
    assert "python -m pytest" in ci[0] and "ruff check" in ci[0]
