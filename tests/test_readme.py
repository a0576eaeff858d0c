"""The README and its pages in docs/ say what is true: CI runs the README's test command, the Correctness and
Faults tables name tests that exist, every link between the pages leads somewhere, and the CartPole seeds'
figures are those of results/."""

import json
import re

from helpers import ROOT, python


def pages() -> list:
    """README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def table_rows(text: str, header: str) -> list:
    """The body rows of every Markdown table of `text` whose header line starts with `header`."""
    rows, inside = [], False
    for line in text.splitlines():
        if line.startswith(header):
            inside = True
        elif inside and line.startswith("|"):
            if not line.startswith("|-"):
                rows.append(line)
        else:
            inside = False
    return rows


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
    """Each test named in the right-hand column of the Correctness and Faults tables (docs/correctness.md, or
    wherever in the README and its pages they are) is a test file, a test function, or a `prefix_*` pattern
    that matches one: a renamed or deleted test cannot leave a claim unproven."""
    text = "\n".join(p.read_text() for p in pages())
    rows = [row for header in ("| claim |", "| fault or bad input |") for row in table_rows(text, header)]
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
    assert len(rows) >= 40 and len(named) >= len(rows), (len(rows), len(named))
    assert not missing, f"the Correctness and Faults tables name tests that do not exist: {missing}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation other than '-' and '_' dropped, spaces to '-'."""
    return "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_").replace(" ", "-")


def anchors(text: str) -> set:
    """Every heading's anchor in a Markdown file, a repeated one numbered as GitHub does (`name-1`, ...)."""
    seen: dict = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#* *$", strip_code(text, inline=False), re.M):
        name = slug(heading)
        out.add(f"{name}-{seen[name]}" if name in seen else name)
        seen[name] = seen.get(name, 0) + 1
    return out


def strip_code(text: str, inline: bool = True) -> str:
    """The text without fenced code blocks (and without inline code spans when `inline`)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text) if inline else text


def broken_links(page, root=ROOT) -> list:
    """Each relative link or image of a Markdown page whose file is not in the repository (`root`), or whose
    #anchor names no heading of the Markdown file it points to."""
    bad = []
    for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?: +\"[^\"]*\")?\)", strip_code(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if root.resolve() not in file.parents:  # a clone holds nothing outside it
            bad.append(f"{target} (outside the repository)")
        elif not file.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            bad.append(f"{target} (no such heading in {file.name})")
    return bad


def test_every_link_between_the_pages_leads_somewhere():
    """Every relative link and image in README.md and docs/*.md points to a file that exists, and an #anchor
    into a Markdown file names one of its headings."""
    assert (ROOT / "docs").is_dir() and len(pages()) >= 5
    bad = {p.relative_to(ROOT).as_posix(): b for p in pages() if (b := broken_links(p))}
    assert not bad, f"broken links: {bad}"


def test_the_link_check_sees_a_broken_link(tmp_path):
    """The check itself: a missing file, a missing heading, a file outside the repository and good links, in a
    page of its own."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/a.md").write_text("# A page (`a.py`)\n\n## Its part, two\n\n## Its part, two\n")
    page = tmp_path / "docs/b.md"
    page.write_text(
        "# B\n\n[ok](a.md#a-page-apy) [ok](a.md#its-part-two-1) [ok](#b) ![ok](a.md) [web](https://x.org/y)\n"
        "`[in code](gone.md)`\n\n```bash\n[in a block](gone.md)\n```\n"
        "[gone](gone.md) [no heading](a.md#its-part-three) ![no image](../gone.png) [no anchor](#c)\n"
        "[elsewhere](../../shared/CONVENTIONS.md)\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "gone.md (no such file)",
        "a.md#its-part-three (no such heading in a.md)",
        "../gone.png (no such file)",
        "#c (no such heading in b.md)",
        "../../shared/CONVENTIONS.md (outside the repository)",
    ]


def test_the_cartpole_seed_figures_are_what_the_results_give():
    """results/cartpole_seeds.json is recomputed from the runs in results/, and docs/gym.md's table is it."""
    p = python("results/cartpole_seeds.py", "--check", timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    data = json.loads((ROOT / "results/cartpole_seeds.json").read_text())
    rows = table_rows((ROOT / "docs/gym.md").read_text(), "| CartPole-v1, 500k steps | last 10 updates")
    assert len(rows) == 3, rows
    for row, who in zip(rows, ("ours", "cleanrl_here"), strict=False):
        cells = []
        for m in data["measures"].values():
            s = m[who]
            lo, hi = s["ci95"]
            share = s["share_of_3_seed_means_at_or_above_bar"]
            cells += [
                f"{s['seeds_1_3']:.1f}",
                f"**{s['all_seeds']:.1f}** [{lo:.1f}, {hi:.1f}]",
                f"{share:.0%}",
            ]
        assert [c.strip() for c in row.strip("|").split("|")][1:] == cells, row
    p_values = [f"{m['permutation_p']:.2f}" for m in data["measures"].values()]
    p_cells = [c.strip() for c in rows[2].strip("|").split("|")][1:]
    assert p_cells == ["", p_values[0], "", "", p_values[1], ""]
