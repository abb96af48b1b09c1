"""Drawing for ``moe_tutorial.trace``: one grid of cells per array, coloured by block."""
from __future__ import annotations

import numpy as np

from .trace import MASKED, OUT_OF_BOUNDS, PADDING, READ, WRITTEN, _WRITES

_HATCH = {PADDING: "///", MASKED: "...", OUT_OF_BOUNDS: "xx"}
_MAX_LEGEND_BLOCKS = 16
_MARGIN = 4


def _colour(i: int):
    import matplotlib
    return matplotlib.colormaps["tab20"]((2 * i) % 20 + (i // 10) % 2)  # neighbours differ


def _cell(coord, ndim, n, wrap):
    """(row, column) of an index: 1-D arrays wrap every ``wrap`` cells; leading dims stack."""
    if ndim == 1:
        return (0, int(coord[0])) if n <= wrap else divmod(int(coord[0]), wrap)
    return int(coord[-2]), int(coord[-1])


def _cells(trace, name, writes, shape, wrap, rows, cols):
    """{(row, col): (block, status)}: the last access of each cell (hits win over misses), and
    {(row, col): blocks}; lanes more than ``_MARGIN`` cells outside the array are only counted."""
    shown = {WRITTEN, MASKED, OUT_OF_BOUNDS} if writes else {READ, PADDING, OUT_OF_BOUNDS, MASKED}
    cells, touched, far = {}, {}, 0
    for a in trace.accesses:
        if a.array != name or (a.op in _WRITES) != writes:
            continue
        for coord, status in zip(a.coords.tolist(), a.status.tolist()):
            if status not in shown:
                continue
            rc = _cell(coord, len(shape), shape[0], wrap)
            if not (-_MARGIN <= rc[0] < rows + _MARGIN and -_MARGIN <= rc[1] < cols + _MARGIN):
                far += 1
                continue
            if status != READ and status != WRITTEN and rc in cells:
                continue  # a masked lane never hides a real access
            cells[rc] = (a.block, status)
            touched.setdefault(rc, set()).add(a.block)
    return cells, touched, far


def _grid_shape(arr, wrap):
    if arr.ndim == 1:
        return (-(-arr.shape[0] // wrap), min(wrap, arr.shape[0])) if arr.size else (0, 0)
    return int(np.prod(arr.shape[:-1])), arr.shape[-1]


def plot(trace, block, arrays, wrap, ax):
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Patch, Rectangle

    if arrays is None:
        arrays = [n for n in trace.arrays if any(a.array == n for a in trace.accesses)]
    elif isinstance(arrays, str):
        arrays = [arrays]
    for n in arrays:
        if n not in trace.arrays:
            raise KeyError(f"plot: {n!r} is not an array argument of the kernel; the arrays are "
                           f"{', '.join(trace.arrays)}")
    if not arrays:
        raise ValueError("plot: the kernel touched no array, there is nothing to draw")
    if block is not None and block not in trace.blocks:
        raise ValueError(f"plot: block {block[:len(trace.grid)]} touched no array (or did "
                         f"not run); the grid is {trace.grid}")
    if ax is None:
        shapes = [_grid_shape(trace.arrays[n], wrap) for n in arrays]
        heights = [max(r, 1) + 2 for r, _ in shapes]
        cell = min(0.3, 7.5 / max(max(c for _, c in shapes), 1))
        fig, axes = plt.subplots(len(arrays), 1, squeeze=False, figsize=(
            10, min(0.6 + cell * sum(heights), 14)), gridspec_kw={"height_ratios": heights})
        axes = list(axes[:, 0])
    else:
        axes = [ax] if len(arrays) == 1 else list(ax)
        fig = axes[0].figure
    order = {b: i for i, b in enumerate(trace.blocks)}

    for name, axis in zip(arrays, axes):
        arr = trace.arrays[name]
        writes = any(a.array == name and a.op in _WRITES for a in trace.accesses)
        rows, cols = _grid_shape(arr, wrap)
        cells, touched, far = _cells(trace, name, writes, arr.shape, wrap, rows, cols)
        inside = {(r, c) for r in range(rows) for c in range(cols)
                  if arr.ndim != 1 or r * wrap + c < arr.shape[0]}
        groups = {}
        for rc in inside - set(cells):
            groups.setdefault(None, []).append((rc, (1, 1, 1, 1), 0.6, "0.75"))
        for rc, (b, status) in cells.items():
            mine = block is not None and block in touched[rc]
            faded = block is not None and not mine
            colour = _colour(order[b])
            colour = colour[:3] + ((0.3,) if faded else (1.0,))
            edge = "black" if mine else "0.6"
            groups.setdefault((_HATCH.get(status), mine), []).append(
                (rc, colour, 2.0 if mine else 0.6, edge))
        for key, items in sorted(groups.items(), key=lambda kv: kv[0] is not None and kv[0][1]):
            hatch = None if key is None else key[0]
            rects = [Rectangle((c, r), 1, 1) for (r, c), *_ in items]
            axis.add_collection(PatchCollection(
                rects, facecolors=[i[1] for i in items], linewidths=[i[2] for i in items],
                edgecolors=[i[3] for i in items], hatch=hatch, match_original=False))
        every = list(cells) + list(inside)
        r0 = min([r for r, _ in every], default=0)
        r1 = max([r for r, _ in every], default=0) + 1
        c0 = min([c for _, c in every], default=0)
        c1 = max([c for _, c in every], default=0) + 1
        axis.set_xlim(c0 - 0.2, c1 + 0.2)
        axis.set_ylim(r1 + 0.2, r0 - 0.2)
        axis.set_aspect("equal")
        axis.set_anchor("W")
        axis.set_xticks([])
        axis.set_yticks([])
        for s in axis.spines.values():
            s.set_visible(False)
        axis.add_patch(Rectangle((0, 0), cols, rows, fill=False, lw=1.5, ec="0.2"))
        verb = "wrote" if writes else "read"
        shape = "x".join(map(str, arr.shape))
        layout = f", {wrap} per row" if arr.ndim == 1 and arr.shape[0] > wrap else ""
        note = f"; {far} lanes far outside the array not drawn" if far else ""
        axis.set_title(f"{name} ({shape}{layout}): coloured by the block that {verb} each cell"
                       f"{note}", fontsize=9, loc="left")

    legend = []
    for b in trace.blocks[:_MAX_LEGEND_BLOCKS]:
        label = f"block {b[:len(trace.grid)]}" + ("  (highlighted)" if b == block else "")
        legend.append(Patch(facecolor=_colour(order[b]), edgecolor="black" if b == block
                            else "0.6", lw=2 if b == block else 0.6, label=label))
    if len(trace.blocks) > _MAX_LEGEND_BLOCKS:
        legend.append(Patch(color="none", label=f"... {len(trace.blocks)} blocks in all"))
    legend += [Patch(facecolor="white", edgecolor="0.6", label="never touched"),
               Patch(facecolor="white", edgecolor="0.3", hatch=_HATCH[PADDING],
                     label="padding (tile lane outside the array)"),
               Patch(facecolor="white", edgecolor="0.3", hatch=_HATCH[MASKED],
                     label="masked lane (touches nothing)"),
               Patch(facecolor="white", edgecolor="0.3", hatch=_HATCH[OUT_OF_BOUNDS],
                     label="out-of-bounds index")]
    fig.legend(handles=legend, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False)
    title = f"tile trace of {trace.kernel_name}, grid {trace.grid}"
    if trace.error is not None:
        title += f" (stopped: {type(trace.error).__name__})"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
