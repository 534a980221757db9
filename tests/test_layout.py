"""The package's text is for its users: no lab notes in ``mijax/`` (the machines a figure was measured on,
sessions, issue numbers, sections of the project's specification, paths outside the repository). Measurements
and their history live in the performance documentation."""
import re
from pathlib import Path

import mijax

LAB_NOTES = re.compile(r"\b(EPYC|Xeon|Genoa|Milan|Intel|AMD|H100|H200|sessions?|issues? \d+|SPEC)\b|\.\./shared|"
                       r"BENCHMARKS\.md|\b20\d\d-\d\d-\d\d\b")


def test_no_lab_notes_inside_the_package():
    found = []
    for path in sorted(Path(mijax.__file__).parent.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if LAB_NOTES.search(line):
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
