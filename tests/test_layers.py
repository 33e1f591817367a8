"""The one-way flow of imports, read from the source with `ast` (shared/design.md, "One-way flow").

LAYERS lists cnnlab's modules lowest first; a module may import only modules listed before it (or
modules of its own package entry, e.g. data/formats.py from data/__init__.py). A module maps to the
longest entry that prefixes its name, so `cnnlab.models.registry` is `cnnlab.models`. Function-level
imports count like top-level ones: hiding an import in a function does not change who depends on whom.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS = [
    # the bottom: errors, time budgets (pure), the run directory and group directories, models, configuration,
    # data, the probes' cache, product speeds, devices
    "cnnlab.version", "cnnlab.errors", "cnnlab.text", "cnnlab.redact", "cnnlab.ports", "cnnlab.budget", "cnnlab.runs", "cnnlab.groups",
    "cnnlab.models", "cnnlab.config", "cnnlab.data", "cnnlab.data.fingerprint", "cnnlab.data.prepared",
    "cnnlab.outputs",
    "cnnlab.probe_cache", "cnnlab.product_speed", "cnnlab.device",
    "cnnlab.allocator",
    "cnnlab.samples",
    # small pure leaves
    "cnnlab.test_time", "cnnlab.metrics", "cnnlab.voting", "cnnlab.losses", "cnnlab.schedules", "cnnlab.optim", "cnnlab.ema",
    "cnnlab.augment", "cnnlab.augment_modern",
    # below the engine: torchrun and inference
    "cnnlab.torchrun", "cnnlab.onnx_route", "cnnlab.inference",
    # the engine: setup before step before checkpoint before loop; the callbacks its defaults use below the loop
    "cnnlab.engine.model_size", "cnnlab.engine.setup", "cnnlab.engine.step", "cnnlab.engine.checkpoint",
    "cnnlab.engine.throughput", "cnnlab.engine.compile_probe", "cnnlab.engine.layout_probe", "cnnlab.engine.width_choice",
    "cnnlab.callbacks", "cnnlab.progress", "cnnlab.tracking",
    "cnnlab.engine.loop", "cnnlab.engine",
    # above the engine
    "cnnlab.fused", "cnnlab.plots", "cnnlab.evaluation", "cnnlab.report", "cnnlab.display", "cnnlab.lr_find",
    # the Ray dispatcher, orchestration, export, the API and the CLI on top
    "cnnlab.distributed", "cnnlab.studies", "cnnlab.ensembles", "cnnlab.search", "cnnlab.deploy", "cnnlab.submissions",
    "cnnlab.api", "cnnlab.cli", "cnnlab", "cnnlab.__main__",
]
TRAINING = ("cnnlab.engine", "cnnlab.fused", "cnnlab.distributed", "cnnlab.studies", "cnnlab.ensembles", "cnnlab.search")
READ_SIDE = ("cnnlab.samples", "cnnlab.display", "cnnlab.onnx_route", "cnnlab.inference", "cnnlab.progress",
             "cnnlab.tracking", "cnnlab.evaluation", "cnnlab.plots",
             "cnnlab.report", "cnnlab.deploy", "cnnlab.submissions", "cnnlab.callbacks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def cnnlab_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) for every import of a cnnlab module, at any depth."""
    name = module_name(path)
    package = name if is_package(path) else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names if alias.name.split(".")[0] == "cnnlab"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "cnnlab":
                continue
            names = [alias.name for alias in node.names]
            # `from package import submodule` imports the submodule
            for n in names:
                sub = f"{target}.{n}"
                if (SRC / sub.replace(".", "/")).with_suffix(".py").is_file() or (SRC / sub.replace(".", "/")).is_dir():
                    out.append((node.lineno, sub, []))
                else:
                    out.append((node.lineno, target, [n]))
    return out


def layer(module: str) -> str:
    candidates = [entry for entry in LAYERS if module == entry or module.startswith(entry + ".")]
    assert candidates, f"{module} is not placed in tests/test_layers.py LAYERS: add it where it belongs"
    return max(candidates, key=len)


SOURCES = sorted(SRC.rglob("*.py"))


def test_every_module_has_a_place():
    for path in SOURCES:
        layer(module_name(path))


def test_imports_point_down():
    wrong = []
    for path in SOURCES:
        here = layer(module_name(path))
        for line, target, _ in cnnlab_imports(path):
            there = layer(target)
            if there != here and LAYERS.index(there) > LAYERS.index(here):
                wrong.append(f"{path.relative_to(SRC)}:{line}: {here} imports {target}, which is above it")
    assert not wrong, "imports pointing up the layers:\n" + "\n".join(wrong)


def test_read_side_never_imports_training():
    wrong = []
    for path in SOURCES:
        name = module_name(path)
        if not any(name == r or name.startswith(r + ".") for r in READ_SIDE):
            continue
        for line, target, _ in cnnlab_imports(path):
            if any(target == t or target.startswith(t + ".") for t in TRAINING):
                wrong.append(f"{path.relative_to(SRC)}:{line}: {name} (read side) imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = {module_name(p): {t for _, t, _ in cnnlab_imports(p)} for p in SOURCES}
    # a package's submodule imported as `from package import x` runs the package first: keep edges as written
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt not in graph:
                continue
            if node.startswith(nxt + ".") and not is_package(SRC / (nxt.replace(".", "/") + "/__init__.py")):
                continue
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_private_name_crosses_modules():
    wrong = []
    for path in SOURCES:
        name = module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        for line, target, names in cnnlab_imports(path):
            wrong += [f"{path.relative_to(SRC)}:{line}: imports {target}.{n}" for n in names
                      if n.startswith("_") and not n.startswith("__") and target != name]
        aliases = {alias.asname or alias.name.split(".")[-1] for node in ast.walk(tree)
                   if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names
                   if isinstance(node, ast.Import) or (node.module or "").startswith("cnnlab") or node.level}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and node.value.id in {t.split(".")[-1] for _, t, _ in cnnlab_imports(path)}:
                wrong.append(f"{path.relative_to(SRC)}:{node.lineno}: uses {node.value.id}.{node.attr}")
    assert not wrong, "private names used across modules:\n" + "\n".join(wrong)


def test_import_cnnlab_leaves_the_heavy_libraries_for_later():
    """`import cnnlab` (and so every CLI command and Ray worker) does not load the libraries only some commands
    use: torchvision's model zoo with torch._dynamo (2.3 s) and scikit-learn (1.35 s) made it 10 s, not 3.5 s,
    on the 2-core AMX Xeon. A check of sys.modules, not a timing."""
    heavy = ["optuna", "ray", "mlflow", "tensorboard", "onnx", "onnxruntime", "torchinfo", "selenium", "IPython",
             "torchvision", "sklearn", "scipy", "torch._dynamo"]
    code = f"import sys, cnnlab, cnnlab.cli; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == [], f"import cnnlab loads {out.stdout.strip()}"
