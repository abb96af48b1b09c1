"""Per-launch state shared by the emulator's operations: the grid, the running block, strict
mode. One launch runs at a time per thread."""
from __future__ import annotations

import os
import threading

STRICT_ENV = "MOE_TUTORIAL_EMULATOR_STRICT"


class _State(threading.local):
    grid: tuple[int, int, int] = (1, 1, 1)
    bid: tuple[int, int, int] = (0, 0, 0)
    strict: bool = False
    kernel_name: str = "?"


state = _State()


def strict_from_env() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def where() -> str:
    """``block (x, y, z) of kernel name`` for error messages."""
    return f"block {state.bid} of kernel {state.kernel_name!r}"
