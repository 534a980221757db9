"""The documentation runs: the code blocks of getting started and of every tutorial; and the relative links of
the README, the home page and those pages lead to files that exist.

Each page of :data:`PAGES` runs in its own temporary folder: its ```python blocks in order in one namespace,
and each line of its ```bash blocks whose first line starts with ``mijax `` through :func:`mijax.cli.main`,
which must exit 0 (other bash blocks, e.g. installing or the real recipe behind a leading comment, are not
run). Then a few checks of what the page says it made (:data:`CHECKS`). The pages' sizes are tiny so that
each takes seconds.
"""
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = ["tutorials/grid-2d.md", "tutorials/shapes.md", "tutorials/detectors.md", "tutorials/recursive.md"]
PAGES = ["getting-started.md"] + TUTORIALS
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)


def blocks(path: Path) -> list[tuple[str, str]]:
    """The fenced code blocks of a Markdown file, in order: (language, code)."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text())]


def commands(code: str) -> list[str]:
    """The commands of a bash block: lines joined at a trailing backslash, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def run_page(path: Path, capsys) -> tuple[dict, int]:
    """Run the page's blocks in the current folder: (the Python namespace, the blocks and commands run)."""
    from mijax import cli

    namespace = {"__name__": "__tutorial__"}
    ran = 0
    for number, (language, code) in enumerate(blocks(path), 1):
        if language == "python":
            exec(compile(code, f"{path.name}, block {number}", "exec"), namespace)
            ran += 1
        elif language == "bash" and code.startswith("mijax "):
            for command in commands(code):
                argv = shlex.split(command)
                assert argv[0] == "mijax", f"{path.name}, block {number}: {command}"
                assert cli.main(argv[1:]) == 0, f"{path.name}, block {number}: {command}\n{capsys.readouterr().err}"
                ran += 1
    return namespace, ran


def check_getting_started(ns: dict, here: Path) -> None:
    assert ns["drawn"]["x"].shape == (1, 200, 1) and ns["drawn"]["hal"].shape == (1, 200)
    assert 0.0 <= ns["rate"] <= 1.0
    assert (here / "samples.npz").is_file() and (here / "s.npz").is_file()
    assert (here / "runs" / "cli" / "train.json").is_file()


def check_grid(ns: dict, here: Path) -> None:
    assert ns["drawn"]["x"].shape == (2, 2000, 2) and ns["drawn"]["hal"].shape == (2, 2000)
    assert ns["hallucinated"].shape == (2000,) and 0.0 <= ns["rate"] <= 1.0
    assert ns["exact_rate"] < 0.01  # the exact score does not interpolate, even at T = 50
    assert 0.0 <= ns["between"].mean() <= 1.0 and len(ns["between"]) == ns["hallucinated"].sum()
    assert ns["figure"].axes[0].get_xlim() == (-0.9, 0.9)  # the returned figure, changed after it was written
    for name in ("grid.png", "grid-middle.png", "samples.png", "roc.png"):
        assert (here / "figures" / name).is_file(), name
    assert (here / "runs" / "grid" / "train.json").is_file() and (here / "grid.npz").is_file()


def check_shapes(ns: dict, here: Path) -> None:
    from mijax.data import shapes

    assert ns["images"].shape == (500, 32, 32)
    assert shapes.summarize_labels(ns["counts"])["valid"] == 500  # every training image is valid
    assert ns["found"].label_names() == ["valid", "duplicate"] and ns["found"].shapes[:, 1].tolist() == [1, 2]
    assert ns["drawn"]["x"].shape == (1, 16, 32, 32, 1) and ns["drawn"]["hal"].shape == (1, 16)
    assert 0.0 <= ns["duplicate_share"] <= 1.0
    assert (here / "figures" / "doubled.png").is_file() and (here / "figures" / "samples.png").is_file()
    assert (here / "runs" / "shapes" / "train.json").is_file()


def check_detectors(ns: dict, here: Path) -> None:
    import mijax

    samples = mijax.load_samples(here / "det.npz")
    assert samples["x"].shape == (1, 1000, 1)
    assert set(samples["scores"]) == {"xt_var", "path_length", "eps_norm", "jac_trace", "jac_frob", "lid", "oracle",
                                      "hal_e10_k10"}
    assert 0.0 <= ns["rate"] <= 1.0 and set(ns["aurocs"]) == {"hal", *samples["scores"]}
    assert all(v is None or 0.0 <= v <= 1.0 for v in ns["aurocs"].values())
    assert (here / "det-figures" / "samples.png").is_file() and (here / "det-figures" / "roc.png").is_file()
    aborted = mijax.load_samples(here / "abort.npz")
    assert aborted["redraws"].shape == aborted["steps"].shape == (1, 1000) and 0 <= aborted["redraws"].max() <= 3
    assert ns["drawn"]["x"].shape == (1, 1000, 1) and ns["drawn"]["steps"].min() >= 30
    assert 0.0 <= ns["before"] <= 1.0 and 0.0 <= ns["after"] <= 1.0 and ns["cost"] >= 1.0


def check_recursive(ns: dict, here: Path) -> None:
    study = here / "study"
    for g in (0, 1):
        for name in ("pool.npz", "kept.npz", "metrics.json", "train.json"):
            assert (study / f"gen_{g:03d}" / name).is_file(), f"gen_{g:03d}/{name}"
    summary = json.loads((study / "metrics.json").read_text())["summary"]
    assert set(summary) == {"random", "variance"}
    for name, table in summary.items():
        for key in ("hallucination_rate", "kept_hallucination_rate"):
            assert len(table[key]) == 2 and all(0.0 <= g["mean"] <= 1.0 for g in table[key]), (name, key)
    with np.load(study / "gen_001" / "pool.npz") as f:
        assert f["x"].shape == (2, 800, 1) and f["hal"].shape == (2, 800)  # filters x seeds models, pool N + 400
    assert len(ns["generation_1"]) == 1 and set(ns["result"]["summary"]) == set(summary)


CHECKS = {"getting-started.md": check_getting_started, "tutorials/grid-2d.md": check_grid,
          "tutorials/shapes.md": check_shapes, "tutorials/detectors.md": check_detectors,
          "tutorials/recursive.md": check_recursive}
LEAST = {"getting-started.md": 7}  # blocks and commands run; every other page at least 4


@pytest.mark.parametrize("page", PAGES)
def test_the_page_has_code_of_both_kinds(page):
    kinds = [language for language, _ in blocks(DOCS / page)]
    assert kinds.count("python") >= 2 and kinds.count("bash") >= 1


def test_every_tutorial_is_run_and_in_the_site():
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in (DOCS / "tutorials").glob("*.md"))
    assert on_disk == sorted(TUTORIALS), "a tutorial page that the tests do not run (or the reverse)"
    nav = (ROOT / "mkdocs.yml").read_text()
    index = (DOCS / "index.md").read_text()
    for page in TUTORIALS:
        assert page in nav, f"{page} is not in mkdocs.yml's nav"
        assert f"({page})" in index, f"docs/index.md does not link {page}"


@pytest.mark.parametrize("page", PAGES)
def test_the_page_runs(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace, ran = run_page(DOCS / page, capsys)
    assert ran >= LEAST.get(page, 4)
    CHECKS[page](namespace, tmp_path)


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(path: Path) -> list[str]:
    """The relative link targets of a Markdown file (outside code), without their #anchors."""
    text = FENCE.sub("", path.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


@pytest.mark.parametrize("name", ["README.md", "docs/index.md", "docs/getting-started.md"] + [f"docs/{t}" for t in TUTORIALS])
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
