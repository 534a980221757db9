"""MkDocs hooks: the command-line reference, generated from the ``mijax`` parser at every build; and the API
pages' Sphinx roles.

``docs/reference/cli.md`` holds the marker ``<!-- mijax-cli-help -->``; this hook replaces it with the help
of ``mijax`` and of each subcommand, as ``mijax COMMAND --help`` prints it (:func:`mijax.cli.build_parser`),
so the reference cannot drift from the program. mijax is imported from this checkout (installed or not).

mijax's docstrings cross-reference in Sphinx's roles (:func:`name`), which mkdocstrings renders as text: the
API pages drop the role and keep the name in code.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- mijax-cli-help -->"
WIDTH = 100  # the help's line width, fixed so that the page does not depend on the terminal that built it
ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):(?=<code>)")
SKIP = ("bench",)  # parses its own options, from a source checkout's benchmarks/ (mijax bench --help)


def _import_cli():
    """``mijax.cli`` of this checkout; ``experiments/`` stands in as ``mijax.experiments`` when mijax is not
    installed (pyproject's package-dir mapping does that on installation)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import mijax

    if importlib.util.find_spec("mijax.experiments") is None:
        spec = importlib.util.spec_from_file_location("mijax.experiments", ROOT / "experiments" / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / "experiments")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["mijax.experiments"] = module
        spec.loader.exec_module(module)
        mijax.experiments = module
    from mijax import cli

    return cli


def cli_reference() -> str:
    """Markdown: ``mijax --help`` and ``mijax COMMAND --help`` for every subcommand, each in a text block."""
    cli = _import_cli()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH)
    try:
        parser = cli.build_parser()
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        sections = [("mijax", parser)] + [(f"mijax {name}", p) for name, p in sub.choices.items() if name not in SKIP]
        parts = []
        for title, p in sections:
            parts.append(f"## `{title}`\n\n```text\n{p.format_help().rstrip()}\n```\n")
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())


def on_page_content(html: str, page, config, files) -> str:
    return ROLE.sub("", html) if page.file.src_uri.startswith("reference/") else html
