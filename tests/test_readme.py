"""CI runs what the README tells a user to run: the ci:test block and the commands in .ci/run are the same."""

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
    assert ci == block.group(1).strip().splitlines()
    assert "python -m pytest" in ci[-1] and "ruff check" in ci[-1]


def test_every_test_the_correctness_table_names_exists():
    """Each test named in the right-hand column of the README's Correctness table is a test file, a test
    function, or a `prefix_*` pattern that matches one: a renamed or deleted test cannot leave a claim unproven."""
    section = (ROOT / "README.md").read_text().split("\n## Correctness\n", 1)[1].split("\n## ", 1)[0]
    headers = ("| claim |", "| fault or bad input |")
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith(headers)]
    named = [n for row in rows for n in re.findall(r"`([^`]+)`", row.rsplit(" | ", 1)[1])]
    named = [n for n in named if n.startswith(("test_", "tests/"))]
    sources = "".join(f.read_text() for f in sorted((ROOT / "tests").glob("test_*.py")))
    defined = set(re.findall(r"^def (test_\w+)\(", sources, re.M))
    missing = [
        n
        for n in named
        if not (
            (ROOT / n).is_file()
            if n.startswith("tests/")
            else any(d.startswith(n[:-1]) for d in defined)
            if n.endswith("*")
            else n in defined
        )
    ]
    assert len(rows) >= 20 and len(named) >= len(rows), (len(rows), len(named))
    assert not missing, f"the README's Correctness table names tests that do not exist: {missing}"
