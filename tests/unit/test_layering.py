"""The package reads top-down: no import arrow points back up, and each SDK has one home.

Read from the source with `ast`, so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "edge"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, by its full name (`from edge import x` gives `edge.x`)."""
    module = module_name(path)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


IMPORTS = {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def importers(prefix: str) -> set[str]:
    """The modules that import `prefix` or anything under it."""
    return {
        module
        for module, names in IMPORTS.items()
        if any(name == prefix or name.startswith(prefix + ".") for name in names)
    }


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_package_was_found() -> None:
    assert {"edge.cli", "edge.pipeline", "edge.serving.app", "edge.tracking.experiment"} <= set(IMPORTS)


def test_only_edge_cloud_imports_google_sdks() -> None:
    assert {m for m in importers("google") if not within(m, "edge.cloud")} == set()


def test_only_edge_containers_imports_the_docker_sdk() -> None:
    assert importers("docker") == {"edge.containers"}


def test_nothing_below_the_cli_imports_it() -> None:
    assert {m for m in importers("edge.cli") if not within(m, "edge.cli") and m != "edge.__main__"} == set()


@pytest.mark.parametrize(
    ("package", "must_not_import"),
    [
        # Tracking records runs; the pipeline calls it (edge.tracked_training), never the reverse.
        ("edge.tracking", ["edge.pipeline", "edge.tracked_training", "edge.train", "edge.evaluate"]),
        # The model server needs the model and monitoring, not the way models are made or released.
        ("edge.serving", ["edge.pipeline", "edge.train", "edge.tracking", "edge.cloud", "edge.containers"]),
        # Monitoring is wired into the server by the server.
        ("edge.monitoring", ["edge.serving", "edge.pipeline", "edge.tracking", "edge.cloud"]),
        # The pipeline's stages run the same on a laptop, in a container and on Vertex AI.
        ("edge.pipeline", ["edge.cloud", "edge.containers", "edge.tracking", "edge.serving"]),
        ("edge.cloud", ["edge.containers", "edge.tracking", "edge.serving", "edge.pipeline"]),
    ],
)
def test_no_import_points_back_up(package: str, must_not_import: list[str]) -> None:
    offending = {
        (module, target)
        for module, names in IMPORTS.items()
        if within(module, package)
        for target in must_not_import
        for name in names
        if within(name, target) and not within(name, package)
    }
    assert offending == set()


@pytest.mark.parametrize("foundation", ["edge.envsettings", "edge.lineage", "edge.storage"])
def test_the_foundations_import_nothing_of_edge_but_the_environment_settings(foundation: str) -> None:
    # `from edge import envsettings` records both `edge` and `edge.envsettings`.
    assert {name for name in IMPORTS[foundation] if within(name, "edge")} <= {"edge", "edge.envsettings"}
    assert {name for name in IMPORTS["edge.envsettings"] if within(name, "edge")} == set()
