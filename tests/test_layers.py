"""Layers (docs/design.md §1): every kdbench module's imports, read from its source (module-level and
function-local alike: an import moved into a function to step around a cycle is still a cycle),
go one way. No core module imports a method, and the kdbench modules import each other without a
cycle, but for the wrong-way imports named in ALLOWED (each with why it is still there; the list
only shrinks)."""
from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kdbench"
METHOD_PACKAGES = ("kdbench.methods",)

# (importer, imported): wrong-way imports that remain. Remove an entry when its import goes.
ALLOWED = {
    # a dataset's declared `student_budget` is checked against the budget rules at registration;
    # the rule names belong with the dataset declaration (issue 17, item 2).
    ("kdbench.data.catalogue", "kdbench.models.budget"),
    # the seed-fusion bench is registered by the bench package but lives in bench_fuse, which
    # uses the bench package's session.
    ("kdbench.bench.seeds", "kdbench.bench_fuse"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _nodes(tree: ast.AST):
    """Every node, less the bodies of `if TYPE_CHECKING:` (annotations only, never imported)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def imported_names(name: str, path: Path) -> set[str]:
    """The dotted names a module imports (relative imports made absolute; `from pkg import sub`
    gives `pkg.sub` when `sub` is a module)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: set[str] = set()
    for node in _nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module or ""
            subs = {f"{base}.{a.name}" for a in node.names}
            out.update({s for s in subs if s in MODULES or s.startswith(METHOD_PACKAGES)} or {base})
    return out


def owner(dotted: str) -> str | None:
    """The kdbench module a dotted import name lands in (`kdbench.x.f` -> `kdbench.x`)."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def graph() -> dict[str, set[str]]:
    """kdbench module -> the kdbench modules it imports (the package `kdbench` itself left out:
    every submodule's import goes through it)."""
    return {n: {o for d in imported_names(n, p) if d.startswith("kdbench.") for o in [owner(d)]
                if o and o not in (n, "kdbench")} for n, p in MODULES.items()}


def test_the_reader_sees_function_local_and_relative_imports(tmp_path):
    src = tmp_path / "kdbench" / "x" / "mod.py"
    src.parent.mkdir(parents=True)
    src.write_text("from ..sweep import plan\nfrom . import y\n"
                   "def f():\n    from ..runner import run\n    import kdbench.methods.tcn\n"
                   "if TYPE_CHECKING:\n    from ..api import sweep\n")
    names = imported_names("kdbench.x.mod", src)
    assert {"kdbench.sweep", "kdbench.x", "kdbench.runner", "kdbench.methods.tcn"} <= names
    assert not any(n.startswith("kdbench.api") for n in names)


def _is_method(dotted: str) -> bool:
    return any(dotted == m or dotted.startswith(m + ".") for m in METHOD_PACKAGES)


def test_no_core_module_imports_a_method():
    bad = {n: sorted(d for d in imported_names(n, p) if _is_method(d))
           for n, p in MODULES.items() if not _is_method(n)}
    assert not {n: d for n, d in bad.items() if d}, "core modules import a method (declare it on the Method class instead)"


def test_no_import_cycle_among_kdbench_modules():
    g = graph()
    stale = {e for e in ALLOWED if e[1] not in g.get(e[0], set())}
    assert not stale, f"ALLOWED names imports that are gone: {sorted(stale)} (remove them)"
    pruned = {n: {d for d in deps if (n, d) not in ALLOWED} for n, deps in g.items()}
    try:
        tuple(graphlib.TopologicalSorter(pruned).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle among kdbench modules: {' -> '.join(e.args[1])}")


def test_methods_are_a_plain_subpackage():
    """`kdbench.methods` is the folder kdbench/methods/ (no package-dir remapping at install time),
    so a plain checkout on sys.path imports it."""
    import importlib.util
    spec = importlib.util.find_spec("kdbench.methods")
    assert spec is not None and Path(spec.origin).parent == PACKAGE / "methods"
    assert "package-dir" not in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("low, high", [("kdbench.sweep", "kdbench.api"), ("kdbench.teachers", "kdbench.method"),
                                        ("kdbench.models.budget", "kdbench.teachers"),
                                        ("kdbench.executors", "kdbench.ray_exec"), ("kdbench.seed_fuse", "kdbench.runner")])
def test_named_layers_go_one_way(low, high):
    """The wrong-way imports docs/design.md §1 listed, now each one way (`high` may import `low`)."""
    assert high not in graph()[low]


def test_a_built_wheel_holds_every_subpackage(tmp_path):
    """An install that is not editable gets every subpackage (methods, papers, ...), not a listed few."""
    import subprocess
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("kdbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {p.parent.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("__init__.py")}
    assert {p for p in packages if f"{p}/__init__.py" not in names} == set()
