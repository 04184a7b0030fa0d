"""The package's layers: imports point down only, and modules stay small (bundle/docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ctmri_monai"

#: Bottom (0) to top. A module may import from lower layers and from its own package; nothing else.
LAYERS: dict[str, int] = {
    "ctmri_monai": 0, "spec": 0, "io": 0, "utils": 0,
    "transforms": 1,
    "data": 2, "networks": 2, "metrics": 2, "losses": 2,
    "engines": 3,
    "handlers": 4,
    "convert": 5, "phantoms": 5,
    "node": 6,
    "apps": 7,
}
MAX_LINES = 450


def unit(module: str) -> str:
    """The layer unit of a dotted module name: its first part below ``ctmri_monai`` (the root for itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ctmri_monai"


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, module) of every ``ctmri_monai`` import in a file, lazy ones inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("ctmri_monai")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: -node.level] if not path.name == "__init__.py" else \
                    module.split(".")[: len(module.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("ctmri_monai"):
                found.append((node.lineno, name))
    return found


def violations(path: Path, module: str) -> list[str]:
    """Imports of ``module`` (in ``path``) that point up or sideways across packages of one layer."""
    own = unit(module)
    problems = []
    for line, name in imported_modules(path, module):
        other = unit(name)
        if other == own or other in ("ctmri_monai", "spec"):
            continue
        if other not in LAYERS:
            problems.append(f"{path.name}:{line} imports {name}, a package with no layer")
        elif LAYERS[other] >= LAYERS[own]:
            problems.append(f"{module}:{line} imports {name} (layer {LAYERS[other]} >= {LAYERS[own]})")
    return problems


def modules() -> list[tuple[Path, str]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((path, ".".join(parts)))
    return out


def test_every_package_has_a_layer():
    units = {unit(m) for _, m in modules()}
    assert units <= set(LAYERS), sorted(units - set(LAYERS))


def test_imports_point_down_only():
    problems = [p for path, module in modules() for p in violations(path, module)]
    assert not problems, "\n".join(problems)


def test_an_upward_import_is_caught(tmp_path):
    """Negative control: the check fails on a module of the bottom layer that imports conversion."""
    fake = tmp_path / "reader.py"
    fake.write_text("def f():\n    from ctmri_monai.convert.batch import run_batch\n    return run_batch\n")
    assert violations(fake, "ctmri_monai.io.reader") == [
        "ctmri_monai.io.reader:2 imports ctmri_monai.convert.batch (layer 5 >= 0)"]
    sideways = tmp_path / "images.py"
    sideways.write_text("from ctmri_monai.networks import define_generator\n")
    assert violations(sideways, "ctmri_monai.data.images")  # same layer, other package


@pytest.mark.parametrize("path, module", modules(), ids=lambda v: v if isinstance(v, str) else None)
def test_modules_stay_small(path, module):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{module} has {n} lines (split it: one job per module)"
