"""Print only the lines of a package function that a notebook discusses."""
from __future__ import annotations

import inspect


def show(obj, first: str | None = None, last: str | None = None) -> None:
    """Print the source of ``obj`` (a function or a ``@ct.kernel``) from the first line that
    contains ``first`` through the first line after it that contains ``last`` (both optional),
    numbered as in the file, so the rest can be looked up there."""
    fn = getattr(obj, "_pyfunc", obj)
    lines, start = inspect.getsourcelines(fn)
    lo = _find(lines, first, 0, fn) if first else 0
    hi = _find(lines, last, lo, fn) if last else len(lines) - 1
    path = inspect.getsourcefile(fn).replace("\\", "/").split("/moe_tutorial/")[-1]
    skipped = f", lines {start + lo}-{start + hi} of {start}-{start + len(lines) - 1}" \
        if (lo, hi) != (0, len(lines) - 1) else ""
    print(f"# moe_tutorial/{path}: {fn.__name__}{skipped}")
    for i in range(lo, hi + 1):
        print(f"{start + i:4d}  {lines[i].rstrip()}")


def _find(lines, text, begin, fn) -> int:
    for i in range(begin, len(lines)):
        if text in lines[i]:
            return i
    raise ValueError(f"{text!r} is not in the source of {fn.__name__}")
