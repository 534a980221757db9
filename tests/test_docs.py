"""The documentation runs: the tutorial's code blocks, and the README's links.

``docs/getting-started.md``: its ```python blocks run in order in one namespace, in a temporary folder, and
each line of its ```bash blocks whose first line starts with ``mijax `` runs through :func:`mijax.cli.main`
and must exit 0 (other bash blocks, e.g. installing or the real recipe behind a leading comment, are not run).
The tutorial's sizes are tiny so that this takes seconds.
"""
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "getting-started.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)


def blocks(path: Path) -> list[tuple[str, str]]:
    """The fenced code blocks of a Markdown file, in order: (language, code)."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text())]


def commands(code: str) -> list[str]:
    """The commands of a bash block: lines joined at a trailing backslash, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_tutorial_has_code_of_both_kinds():
    kinds = [language for language, _ in blocks(TUTORIAL)]
    assert kinds.count("python") >= 3 and kinds.count("bash") >= 2


def test_the_tutorial_runs(tmp_path, monkeypatch, capsys):
    from mijax import cli

    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__tutorial__"}
    ran = 0
    for number, (language, code) in enumerate(blocks(TUTORIAL), 1):
        if language == "python":
            exec(compile(code, f"{TUTORIAL.name}, block {number}", "exec"), namespace)
            ran += 1
        elif language == "bash" and code.startswith("mijax "):
            for command in commands(code):
                argv = shlex.split(command)
                assert argv[0] == "mijax", f"block {number}: {command}"
                assert cli.main(argv[1:]) == 0, f"block {number}: {command}\n{capsys.readouterr().err}"
                ran += 1
    assert ran >= 7
    # what the tutorial says it made
    assert namespace["drawn"]["x"].shape == (1, 200, 1) and namespace["drawn"]["hal"].shape == (1, 200)
    assert 0.0 <= namespace["rate"] <= 1.0
    assert (tmp_path / "samples.npz").is_file() and (tmp_path / "s.npz").is_file()
    assert (tmp_path / "runs" / "cli" / "train.json").is_file()


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(path: Path) -> list[str]:
    """The relative link targets of a Markdown file (outside code), without their #anchors."""
    text = FENCE.sub("", path.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


@pytest.mark.parametrize("name", ["README.md"])
def test_every_relative_link_exists(name):
    path = ROOT / name
    links = relative_links(path)
    assert links, f"{name} links nothing"
    missing = [t for t in links if not (path.parent / t).exists()]
    assert not missing, f"{name} links to missing files: {missing}"


def test_the_readme_stays_one_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"
    assert max(map(len, lines)) <= 200
    assert "python3 -m venv .venv && . .venv/bin/activate && pip install -e \".[test]\" && python -m pytest" in lines
