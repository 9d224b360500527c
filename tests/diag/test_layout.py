"""The layers stay visible in the package and their imports go one way.

``diag/model/`` holds the data that crosses layers and imports none of the layers that
use it; ``diag/sources/`` is the transport, and analysis and renderers never import it
(what they need of a fetch is in the model).  Imports are read with ``ast``, those
inside functions and under ``TYPE_CHECKING`` included.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Callable

import diag

PACKAGE = Path(diag.__file__).resolve().parent
#: The layers the model may not import: every one that uses it.
ABOVE_MODEL = ("analysis", "render", "sources", "cli", "agent", "collect")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(layer: str = "") -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) for every module imported by code of ``package``, at any depth,
    relative imports resolved: ``from X import y`` names ``X``, and ``X.y`` too when that
    is a module."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1] + ([node.module] if node.module else [])
                base = ".".join(parts)
            else:
                base = node.module or ""
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names
                      if is_module(f"{base}.{alias.name}")]
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def is_transport(module: str) -> bool:
    """A source module: anything in ``diag.sources``, and any diag module named like one."""
    return within(module, "diag.sources") or (within(module, "diag") and module.endswith("source"))


def violations(layers: tuple[str, ...], forbidden: Callable[[str], bool]) -> list[str]:
    found = []
    for layer in layers:
        for path in modules(layer):
            name = path.relative_to(PACKAGE.parent)
            for line, module in imports(path.read_text(encoding="utf-8"), package_of(path)):
                if forbidden(module):
                    found.append(f"{name}:{line} imports {module}")
    return sorted(set(found))


def test_snapshots_and_sources_live_in_their_layers() -> None:
    assert (PACKAGE / "model" / "__init__.py").is_file()
    assert (PACKAGE / "sources" / "__init__.py").is_file()
    names = [module_name(p) for p in modules()]
    assert [n for n in names if n.endswith("_snapshot") and not within(n, "diag.model")] == []
    assert [n for n in names if is_transport(n) and not within(n, "diag.sources")] == []


def test_analysis_and_render_import_no_source() -> None:
    assert modules("analysis") and modules("render")
    assert violations(("analysis", "render"), is_transport) == []


def test_the_model_imports_no_layer_that_uses_it() -> None:
    assert [p.name for p in modules("model") if p.name.endswith("_snapshot.py")]
    above = [f"diag.{layer}" for layer in ABOVE_MODEL]
    assert violations(("model",), lambda m: is_transport(m) or any(within(m, a) for a in above)) == []


def test_imports_in_functions_and_relative_ones_count() -> None:
    code = (
        "from ..collect import heap\n"
        "from . import fit\n"
        "def view():\n"
        "    from diag.sources.multi_source import fetch_all\n"
        "    import diag.cli.app\n"
    )
    assert imports(code, "diag.render") == [
        (1, "diag.collect"), (1, "diag.collect.heap"), (2, "diag.render"), (2, "diag.render.fit"),
        (4, "diag.sources.multi_source"), (5, "diag.cli.app"),
    ]
