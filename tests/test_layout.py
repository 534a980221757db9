"""The package's layout: its text is for its users, and its modules import downwards only.

No lab notes in ``mijax/`` (the machines a figure was measured on, sessions, issue numbers, sections of the
project's specification, paths outside the repository): measurements and their history live in the
performance documentation. The import graph, read from the source, has no cycles, and no module imports a
module of a higher layer than its own (:data:`LAYERS`)."""
import ast
import re
from pathlib import Path

import mijax
import mijax.experiments

PACKAGE = Path(mijax.__file__).parent
# The package's sources: mijax/, and the top-level experiments/ that installs as mijax.experiments.
SOURCES = {PACKAGE: "mijax", Path(mijax.experiments.__file__).parent: "mijax.experiments"}
LAB_NOTES = re.compile(r"\b(EPYC|Xeon|Genoa|Milan|Intel|AMD|H100|H200|sessions?|issues? \d+|SPEC)\b|\.\./shared|"
                       r"BENCHMARKS\.md|\b20\d\d-\d\d-\d\d\b")


def test_no_lab_notes_inside_the_package():
    found = []
    for path in sorted(p for root in SOURCES for p in root.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if LAB_NOTES.search(line):
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


# ---------------------------------------------------------------------------------------------
# The import graph: no cycles, and no module imports a layer above its own.

# The layers of the package, bottom (0) to top. A module may import modules of its own layer and of the layers
# below. A key names a module or a package with everything in it; the longest key that names a module gives
# its layer. Every module must have one: a new module is placed here.
UTILITIES, MATHS, DATA_AND_MODELS, CONFIGURATION, TRAINING_AND_SAMPLING, RUNS, EXPERIMENTS, COMMAND_LINE = range(8)
LAYER_NAMES = ("utilities", "maths", "data sets and models", "configuration", "training and sampling",
               "runs, studies, evaluation and figures", "experiments", "command line")
LAYERS = {
    # exceptions, what mijax writes and reads on disk (run directories, checkpoints), keys, registries, how a
    # model runs (devices, meshes, processes, progress bars), signals, timing
    "mijax.errors": UTILITIES, "mijax.store": UTILITIES, "mijax.keys": UTILITIES, "mijax.version": UTILITIES,
    "mijax.signals": UTILITIES, "mijax.timing": UTILITIES, "mijax.allocator": UTILITIES,
    "mijax.execution": UTILITIES, "mijax.registry": UTILITIES,
    # noise schedules, the diffusion maths, the mixtures' exact scores, statistics, Hal's reductions, the
    # detectors' reductions, the filters, guidance toward a mode
    "mijax.diffusion": MATHS, "mijax.mixtures": MATHS, "mijax.stats": MATHS, "mijax.guidance": MATHS,
    "mijax.hal": MATHS, "mijax.detectors": MATHS, "mijax.filters": MATHS, "mijax.samplers": MATHS,
    # data sets (and the digits' feature classifier), denoisers
    "mijax.data": DATA_AND_MODELS, "mijax.features": DATA_AND_MODELS, "mijax.models": DATA_AND_MODELS,
    # every configuration: data set, model, diffusion, training, run, sampler, sampling, abort, recursion
    "mijax.config": CONFIGURATION,
    # training, sampling with Hal, drawing to disk, abort and resample, detection metrics
    "mijax.training": TRAINING_AND_SAMPLING,
    "mijax.sampling": TRAINING_AND_SAMPLING, "mijax.collect": TRAINING_AND_SAMPLING,
    "mijax.abort": TRAINING_AND_SAMPLING, "mijax.detection": TRAINING_AND_SAMPLING,
    # run directories, the recursive study, evaluation of samples files, figures
    "mijax.runs": RUNS, "mijax.recursive": RUNS, "mijax.evaluation": RUNS, "mijax.plots": RUNS,
    "mijax.experiments": EXPERIMENTS,
    "mijax.cli": COMMAND_LINE,
}
# The top package is the public API: it may import anything, and a module inside it that imports ``mijax``
# imports from above its own layer.
PUBLIC_API = len(LAYER_NAMES)
# Imports that go up, each with the reason it is still here; one that is gone must leave this list too.
UPWARD_EXCEPTIONS: set[tuple[str, str]] = set()


def module_files(package, name: str = "") -> dict[str, tuple[Path, bool]]:
    """Every module of a package: dotted name -> (file, whether it is a package's ``__init__``). ``package``
    is its folder (the package named like the folder), or {folder: dotted name} for a package whose
    subpackages live in other folders."""
    roots = package if isinstance(package, dict) else {package: name or package.name}
    found = {}
    for root, dotted in roots.items():
        for path in sorted(root.rglob("*.py")):
            parts = dotted.split(".") + list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_graph(package, name: str) -> dict[str, dict[str, int]]:
    """module -> {imported module of the package: the line of its first import} for every ``import`` and
    ``from ... import`` in the package's source, those inside functions included. ``from P import N`` imports
    module ``P.N`` where that is a module, else ``P``; relative imports are resolved against the importer."""
    modules = module_files(package, name)
    graph = {}
    for module, (path, is_package) in modules.items():
        here = module if is_package else module.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[:len(here.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                           for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # import a.b.c of a package without c: a.b
                    target = target.rpartition(".")[0]
                if target and target != module and (target == name or target.startswith(name + ".")):
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle through each strongly connected group of modules, as a chain ``[a, b, ..., a]``."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for group in groups:
        start = min(group)
        paths, seen = [[start]], {start}
        while paths:  # breadth first inside the group: the shortest way back to start
            path = paths.pop(0)
            for w in sorted(graph[path[-1]]):
                if w == start:
                    found.append(path + [start])
                    paths = []
                    break
                if w in group and w not in seen:
                    seen.add(w)
                    paths.append(path + [w])
    return sorted(found)


def layer_of(module: str, layers=LAYERS, top: str = "mijax"):
    """The layer of ``module``: that of the longest key naming it or a package above it; the top package's
    is above every layer; None for a module the table does not place."""
    if module == top:
        return PUBLIC_API
    keys = [key for key in layers if module == key or module.startswith(key + ".")]
    return layers[max(keys, key=len)] if keys else None


def upward_imports(graph: dict[str, dict[str, int]], layers=LAYERS, top: str = "mijax") -> set[tuple[str, str]]:
    """(importer, imported) for every import of a module of a higher layer than the importer's; the top
    package (the public API) may import anything."""
    return {(module, target) for module, edges in graph.items() if module != top for target in edges
            if layer_of(target, layers, top) > layer_of(module, layers, top)}


FILES = module_files(SOURCES)
GRAPH = import_graph(SOURCES, "mijax")


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in GRAPH if layer_of(m) is None)
    assert not unplaced, f"modules without a layer (place them in LAYERS in {Path(__file__).name}): {unplaced}"
    stale = sorted(key for key in LAYERS if key not in GRAPH)
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_no_import_cycles():
    found = cycles(GRAPH)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_no_module_imports_from_a_layer_above_its_own():
    def where(module):
        layer = layer_of(module)
        return f"{module} ({LAYER_NAMES[layer] if layer < PUBLIC_API else 'the public API'})"

    found = upward_imports(GRAPH)
    lines = [f"{FILES[a][0]}:{GRAPH[a][b]}: {where(a)} imports {where(b)}"
             for a, b in sorted(found - UPWARD_EXCEPTIONS)]
    assert not lines, "imports from a higher layer:\n" + "\n".join(lines)
    assert not UPWARD_EXCEPTIONS - found, f"no longer upward, remove from UPWARD_EXCEPTIONS: {UPWARD_EXCEPTIONS - found}"



def test_the_import_graph_sees_every_kind_of_import(tmp_path):
    """The graph on a small package: module-level, function-level, ``from P import module``, relative imports,
    and the cycle and the upward import they make."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from pkg.low import helper\n")
    (package / "low.py").write_text("import os\n\ndef helper():\n    from pkg import high\n    return high\n")
    (package / "high.py").write_text("import pkg.low\nfrom pkg import sub\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("from . import b\nfrom ..low import helper\n")
    (package / "sub" / "b.py").write_text("from pkg.sub.a import thing\nimport pkg\n")
    graph = import_graph(package, "pkg")
    assert graph == {"pkg": {"pkg.low": 1}, "pkg.low": {"pkg.high": 4}, "pkg.high": {"pkg.low": 1, "pkg.sub": 2},
                     "pkg.sub": {}, "pkg.sub.a": {"pkg.sub.b": 1, "pkg.low": 2}, "pkg.sub.b": {"pkg.sub.a": 1, "pkg": 2}}
    assert cycles(graph) == [["pkg.high", "pkg.low", "pkg.high"], ["pkg.sub.a", "pkg.sub.b", "pkg.sub.a"]]
    layers = {"pkg.low": 0, "pkg.high": 1, "pkg.sub": 1}
    assert layer_of("pkg.sub.a", layers, "pkg") == 1 and layer_of("pkg", layers, "pkg") == PUBLIC_API
    assert upward_imports(graph, layers, "pkg") == {("pkg.low", "pkg.high"), ("pkg.sub.b", "pkg")}


def test_building_the_command_line_starts_no_backend():
    """The configuration (whose defaults the parser shows) is built without JAX's backends, which the program
    must still be able to give one device per core and its XLA flags after parsing (mijax.execution)."""
    import subprocess
    import sys

    code = ("from mijax.cli import build_parser; build_parser(); from jax._src import xla_bridge; "
            "print(bool(xla_bridge._backends))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_no_top_level_experiments_package_is_installed(tmp_path):
    """The experiments folder installs as mijax.experiments only: outside the checkout ``experiments`` is not
    importable."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import importlib.util, mijax.experiments; print(importlib.util.find_spec('experiments'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=120)
    assert out.stdout.strip() == "None", out.stderr
