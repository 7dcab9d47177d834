"""Find `X | Y` type unions that Python evaluates at run time, in code for Python 3.9.

`make lint` runs vermin on what runs on the managed hosts (plugins/modules and
plugins/module_utils) with a 3.9 target. vermin finds `X | Y` unions (Python 3.10) only
with its union-types feature, a heuristic that also reports every `str | None` annotation
(strings under `from __future__ import annotations`, fine on 3.9) and flag arithmetic such
as `os.R_OK | os.W_OK`. This check covers that one gap, outside annotations:

- any `|` in the classes given to isinstance/issubclass or named by an `except`;
- any `|` with a type on either side: None, a builtin type, a name imported from typing or
  collections.abc (or reached through them), a subscripted generic (`list[str] | None`).

It also requires `from __future__ import annotations` in a file whose annotations use `|`.

Usage: python .ci/runtime_unions.py PATH... (files or directories of *.py); prints
PATH:LINE: what, and exits 1 when something is found.
"""

from __future__ import annotations

import ast
import builtins
import sys
from collections.abc import Iterator
from pathlib import Path

TYPING_MODULES = {"typing", "typing_extensions", "collections.abc", "types"}
BUILTIN_TYPES = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and not issubclass(value, BaseException)
}


def _annotations(tree: ast.AST) -> Iterator[ast.expr]:
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            yield node.annotation
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def _has_bitor(node: ast.AST) -> bool:
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(node))


class _Finder(ast.NodeVisitor):
    def __init__(self, typing_names: set[str], typing_modules: set[str]) -> None:
        self.typing_names = typing_names  # Any, Iterable, ... as imported
        self.typing_modules = typing_modules  # typing, t, abc, ... as imported
        self.found: list[tuple[int, str]] = []

    def _is_type(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Constant):
            return node.value is None
        if isinstance(node, ast.Name):
            return node.id in BUILTIN_TYPES or node.id in self.typing_names
        if isinstance(node, ast.Attribute):
            root = node
            while isinstance(root, ast.Attribute):
                root = root.value
            return isinstance(root, ast.Name) and root.id in self.typing_modules
        if isinstance(node, ast.Subscript):
            return self._is_type(node.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self._is_type(node.left) or self._is_type(node.right)
        return False

    # annotations are not evaluated (the file imports annotations from __future__)
    def visit_arg(self, node: ast.arg) -> None:
        pass

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.visit(node.target)
        if node.value is not None:
            self.visit(node.value)

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for child in (*node.decorator_list, *node.args.defaults, *node.args.kw_defaults):
            if child is not None:
                self.visit(child)
        for statement in node.body:
            self.visit(statement)

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else None
        if name in ("isinstance", "issubclass") and len(node.args) == 2:
            if _has_bitor(node.args[1]):
                self.found.append((node.lineno, f"{name}() with an `X | Y` union (3.10+)"))
                for child in (func, node.args[0], *node.keywords):
                    self.visit(child)
                return
        self.generic_visit(node)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None and _has_bitor(node.type):
            self.found.append((node.lineno, "except with an `X | Y` union (3.10+)"))
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.BitOr) and self._is_type(node):
            self.found.append((node.lineno, f"`{ast.unparse(node)}`: a type union (3.10+)"))
            return  # one report per union
        self.generic_visit(node)


def check_file(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    typing_names: set[str] = set()
    typing_modules: set[str] = set()
    future_annotations = False
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            future_annotations |= any(a.name == "annotations" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module in TYPING_MODULES:
            typing_names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            typing_modules |= {
                a.asname or a.name.split(".")[0] for a in node.names if a.name in TYPING_MODULES
            }
    finder = _Finder(typing_names, typing_modules)
    finder.visit(tree)
    found = list(finder.found)
    if not future_annotations:
        found += [
            (ann.lineno, "`|` in an annotation without `from __future__ import annotations`")
            for ann in _annotations(tree)
            if _has_bitor(ann)
        ]
    return sorted(set(found))


def main(argv: list[str]) -> int:
    paths: list[Path] = []
    for arg in argv:
        path = Path(arg)
        paths += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    problems = 0
    for path in paths:
        for line, what in check_file(path):
            print(f"{path}:{line}: {what}")
            problems += 1
    if problems:
        print(f"runtime_unions: {problems} problem(s) in code that must run on Python 3.9")
        return 1
    print(f"runtime_unions: {len(paths)} files, no `X | Y` evaluated at run time")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
