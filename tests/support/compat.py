"""Checks shared by the tests of the compatibility modules (aioimaplib_compat, aiosmtpd_compat).

A compatibility module declares ``RELIES_ON`` (see mailpipe.common.reliance). The
tests built from these helpers make three promises:

1. every entry still holds against the installed library (names, the
   parameters of methods, the methods overridden);
2. the module uses no private name of the library, and no name of the
   library's module, that its table leaves out — so a new reliance cannot
   be added without its check;
3. no other module of mailpipe uses a private name of the library;
4. pyproject.toml pins the library to the module's ``REQUIREMENT``, which
   the installed release (the one the checks just ran against) satisfies.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import tokenize
import tomllib
from importlib.metadata import version
from pathlib import Path
from types import ModuleType

from packaging.requirements import Requirement

import mailpipe
from tests.support.paths import REPO_ROOT
import mailpipe.plugins
import mailpipe.sinks
from mailpipe.common.reliance import Reliance


def broken_reliances(relies_on: tuple[Reliance, ...]) -> list[str]:
    return [problem for reliance in relies_on if (problem := reliance.problem()) is not None]


def pin_problems(compat: ModuleType) -> list[str]:
    """What is wrong with the library's pin in pyproject.toml, if anything."""
    requirement = Requirement(compat.REQUIREMENT)
    pyproject = REPO_ROOT / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    problems = []
    if compat.REQUIREMENT not in declared:
        problems.append(f"pyproject.toml does not declare {compat.REQUIREMENT!r} (it declares {declared})")
    installed = version(requirement.name)
    if installed not in requirement.specifier:
        problems.append(f"{requirement.name} {installed} is installed, outside {compat.REQUIREMENT!r}")
    return problems


def library_private_names(library: ModuleType) -> set[str]:
    """Every single-underscore name that appears in the library's source."""
    names: set[str] = set()
    for path in Path(library.__file__).parent.rglob("*.py"):  # type: ignore[arg-type]
        source = path.read_text(encoding="utf-8")
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            text = token.string
            if token.type == tokenize.NAME and text.startswith("_") and not text.startswith("__") and len(text) > 1:
                names.add(text)
    return names


def unlisted_reliances(compat: ModuleType, library: ModuleType) -> list[str]:
    """Names of the library the compat module uses that its ``RELIES_ON`` omits."""
    relies_on: tuple[Reliance, ...] = compat.RELIES_ON
    listed = {reliance.name for reliance in relies_on} | {
        getattr(reliance.owner, "__name__", "") for reliance in relies_on
    }
    private = library_private_names(library)
    tree = ast.parse(inspect.getsource(compat))
    library_aliases = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name.split(".")[0] == library.__name__
    }
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == library.__name__:
            used.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id in library_aliases:
                used.add(node.attr)
            elif node.attr in private:
                used.add(node.attr)
        elif isinstance(node, ast.ClassDef):
            used.update(
                item.name for item in node.body if isinstance(item, ast.FunctionDef) and item.name in private
            )
    return sorted(used - listed)


def _mailpipe_sources() -> list[Path]:
    roots = [Path(package.__file__).parent for package in (mailpipe, mailpipe.plugins, mailpipe.sinks)]  # type: ignore[arg-type]
    return sorted({path for root in roots for path in root.rglob("*.py")})


def private_uses_elsewhere(compat: ModuleType, library: ModuleType) -> list[str]:
    """``file: name`` for each private name of the library used outside the compat module.

    An attribute counts when the module reads it without assigning it
    itself (its own ``self._x`` is not the library's); a method counts when
    a class that derives from the library overrides it."""
    private = library_private_names(library)
    compat_file = Path(inspect.getsourcefile(compat) or "").resolve()
    found: list[str] = []
    for path in _mailpipe_sources():
        if path.resolve() == compat_file:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assigned = {
            node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
        } | {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private and node.attr not in assigned:
                found.append(f"{path.name}: {node.attr}")
        found.extend(f"{path.name}: {name}" for name in _library_overrides(path, library, private))
    return sorted(set(found))


def _library_overrides(path: Path, library: ModuleType, private: set[str]) -> list[str]:
    """Private library methods overridden by classes of this file that derive from the library."""
    source = path.read_text(encoding="utf-8")
    if library.__name__ not in source and "_compat" not in source:
        return []
    module = importlib.import_module(_module_name(path))
    library_classes = {
        cls
        for submodule in [library, *_submodules(library)]
        for cls in vars(submodule).values()
        if isinstance(cls, type) and cls.__module__.startswith(library.__name__)
    }
    names: list[str] = []
    for cls in vars(module).values():
        if isinstance(cls, type) and cls.__module__ == module.__name__ and not library_classes.isdisjoint(cls.__mro__):
            names.extend(name for name in vars(cls) if name in private)
    return names


def _submodules(library: ModuleType) -> list[ModuleType]:
    root = Path(library.__file__).parent  # type: ignore[arg-type]
    modules = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root).with_suffix("")
        parts = [part for part in relative.parts if part != "__init__"]
        if not parts or "tests" in parts or "docs" in parts:
            continue
        try:
            modules.append(importlib.import_module(".".join([library.__name__, *parts])))
        except ImportError:
            continue
    return modules


def _module_name(path: Path) -> str:
    for package, name in ((mailpipe.plugins, "mailpipe.plugins"), (mailpipe.sinks, "mailpipe.sinks"), (mailpipe, "mailpipe")):
        root = Path(package.__file__).parent  # type: ignore[arg-type]
        if path.is_relative_to(root):
            parts = path.relative_to(root).with_suffix("").parts
            return ".".join([name, *(part for part in parts if part != "__init__")])
    raise ValueError(f"{path} is not in the mailpipe package")
