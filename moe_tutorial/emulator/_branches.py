"""Run-time ``if`` statements type their results as on the GPU.

Python runs only the branch taken, so after ``if n > 0: t = n  else: t = 7`` the emulator would
keep ``t = 7`` as a loosely typed constant. cuTile merges the two branches into one run-time
value, so ``t`` is an int32 scalar there. We rewrite each ``if`` of a kernel (and of the
helpers it calls) so that, when its condition was a run-time value (a Tile), every plain Python
number assigned in its branches becomes a 0-d tile of the constant's default dtype (int ->
int32, float -> float32, bool -> bool_). Compile-time ``if``s are left alone.
"""
from __future__ import annotations

import ast
import inspect
import textwrap
import types

import numpy as np

from . import _dtypes as D
from ._tile import Tile

_COND, _CONCRETE = "__emu_if_cond", "__emu_concrete"


def concrete(value):
    """A loosely typed Python number as the run-time scalar a merged branch gives."""
    if type(value) in (bool, int, float):
        dtype = D.dtype_of_python_scalar(value)
        return Tile(np.array(value, dtype=D.storage(dtype)), dtype)
    return value


HELPERS = {_CONCRETE: concrete, "__emu_Tile": Tile}


def _assigned(stmts) -> list[str]:
    """Names the statements assign (not counting nested functions)."""
    names, todo = [], list(stmts)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and \
                node.id not in names and not node.id.startswith("__emu"):
            names.append(node.id)
        todo.extend(ast.iter_child_nodes(node))
    return sorted(names)


class _Rewrite(ast.NodeTransformer):
    def __init__(self):
        self.count = 0

    def visit_If(self, node: ast.If):
        self.generic_visit(node)
        names = _assigned(node.body + node.orelse)
        if not names:
            return node
        self.count += 1
        cond = f"{_COND}{self.count}"
        merge = "\n".join(
            f"    try:\n        {n} = {_CONCRETE}({n})\n    except NameError:\n        pass"
            for n in names)
        tail = ast.parse(f"if isinstance({cond}, __emu_Tile):\n{merge}").body
        head = ast.Assign(targets=[ast.Name(cond, ast.Store())], value=node.test)
        node.test = ast.Name(cond, ast.Load())
        out = [head, node] + tail
        for n in out:
            ast.copy_location(n, node)
            ast.fix_missing_locations(n)
        for n in tail:
            for sub in ast.walk(n):
                if hasattr(sub, "lineno"):
                    sub.lineno = sub.end_lineno = node.lineno
        return out


_CACHE: dict = {}


def rewrite(func: types.FunctionType):
    """``func``'s code with run-time ``if`` merging, or None if it has no ``if`` that assigns
    (or its source is unavailable)."""
    code = func.__code__
    if code in _CACHE:
        return _CACHE[code]
    _CACHE[code] = new = _rewrite(func)
    return new


def _rewrite(func):
    try:
        lines, first = inspect.getsourcelines(func)
    except (OSError, TypeError):
        return None
    tree = ast.parse(textwrap.dedent("".join(lines)))
    fdef = tree.body[0]
    if not isinstance(fdef, ast.FunctionDef) or fdef.name != func.__name__:
        return None  # e.g. a lambda
    fdef.decorator_list = []
    rw = _Rewrite()
    rw.visit(fdef)
    if not rw.count:
        return None
    ast.increment_lineno(tree, first - 1)
    freevars = func.__code__.co_freevars
    if freevars:  # compile inside a function that binds the free variables, to keep them free
        outer = ast.parse("def __emu_outer():\n" +
                          "".join(f"    {v} = None\n" for v in freevars)).body[0]
        outer.body.append(fdef)
        tree.body = [outer]
        ast.fix_missing_locations(tree)
    module = compile(tree, func.__code__.co_filename, "exec")
    return _find_code(module, func.__name__)


def _find_code(code, name):
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            if c.co_name == name:
                return c
            found = _find_code(c, name)
            if found is not None:
                return found
    return None
