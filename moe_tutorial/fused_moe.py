"""The fused gather/scatter MoE matmul (notebook 03).

One kernel computes one expert GEMM for *all* experts at once. ``routing.align`` has grouped
the token replicas ``r = t*K + k`` by expert and padded every group to a multiple of ``TILE_M``
(``sorted_token_ids``, sentinel ``T*K``), and recorded the expert of every ``TILE_M`` block
(``expert_ids``, -1 for unused blocks). Each block of this kernel then

1. picks its (m-block, n-tile) pair through a 2-D swizzle (``GROUP_SIZE_M`` m-blocks share the
   n-tiles they sweep, so neighbouring blocks reuse the same weight tiles in L2);
2. reads its expert id and leaves at once if it is -1 (padding, or another rank's expert);
3. gathers its ``TILE_M`` token rows of A (row ``r // ROW_DIV``: the token itself for GEMM1,
   the replica's row of the intermediate for GEMM2), sentinel rows masked to zero;
4. loads the expert's weight tile of ``W (E, N, Kd)`` already in the ``(TILE_K, TILE_N)`` layout
   ``ct.mma`` wants, via ``order=(0, 2, 1)`` (no ``ct.transpose`` in the loop). The alternative,
   a plain load + ``ct.transpose`` (``TileConfig.transpose_b``), is kept for measurement: with
   cuTile 1.7 / tileiras 13.4 it compiles to *fewer* SASS instructions (sm_90 fp16, int32
   kernel: 2728 vs 3264 with decode tiles, 3680 vs 6584 with prefill tiles; see notebook 03),
   so the benchmark times both;
5. accumulates in float32, multiplies by the router weight of each replica if asked, and
   scatters the rows back to their replica rows of C, masking sentinel rows and the N edge.

Index arithmetic cannot overflow int32 (the vLLM/SGLang ``stride * token > 2**31`` bug):
- gathers and scatters take one index per axis; cuTile widens each to 64 bits before
  multiplying by the stride (``_gather_scatter_pointer_and_mask`` casts to uint64), so flat
  offsets such as ``replica * N + col`` are never formed in int32;
- the weights' tile address ``expert * stride0 + ...`` reaches ``E * 2I * H`` = 7.5e9 elements
  for DeepSeek-V3's ``w1`` (>> 2**31): when the weights are that big (``needs_int64_indexing``)
  the wrapper launches ``fused_moe_kernel_int64``, whose ``W: ct.IndexedWithInt64`` makes cuTile
  compute those addresses in 64 bits; smaller weights keep the cheaper int32 kernel (sm_90:
  ~1700 fewer SASS instructions);
- every value that stays in int32 is bounded by an array extent that ``ct.launch`` itself
  refuses above 2**31 - 1 (T*K replicas, H, 2I).
"""
from __future__ import annotations

from dataclasses import dataclass

import cuda.tile as ct
import numpy as np

from . import device
from .compile import array, scalar

ConstInt = ct.Constant[int]
ConstBool = ct.Constant[bool]


def swizzle_2d(bid, num_m, num_n, GROUP_SIZE_M):
    """Block id -> (m-block, n-tile), grouped: ``GROUP_SIZE_M`` consecutive m-blocks walk the
    n-tiles together (m fastest), so the blocks running at the same time touch few distinct
    weight tiles and few distinct token rows. Works on Python ints and inside kernels."""
    blocks_per_group = GROUP_SIZE_M * num_n
    group = bid // blocks_per_group
    first_m = group * GROUP_SIZE_M
    group_m = min(num_m - first_m, GROUP_SIZE_M)
    pid_m = first_m + bid % group_m
    pid_n = (bid % blocks_per_group) // group_m
    return pid_m, pid_n


def fused_moe_tile(A, W, C, topk_weights, sorted_token_ids, expert_ids, ROW_DIV,
                   MUL_ROUTED_WEIGHT, TILE_M, TILE_N, TILE_K, GROUP_SIZE_M, TRANSPOSE_B):
    """The work of one block of ``fused_moe_kernel``: C[r] = A[r // ROW_DIV] @ W[e].T
    (x topk_weights[r]) for the replicas r of this block's m-block, one n-tile.

    A (rows, Kd), W (E, N, Kd), C (T*K, N), topk_weights (T*K,) float32,
    sorted_token_ids (num_m * TILE_M,) int32, expert_ids (num_m,) int32. TRANSPOSE_B=True loads
    W's tile as stored and transposes it in the loop instead -- kept only to measure the two
    against each other."""
    num_m = expert_ids.shape[0]
    num_n = ct.cdiv(W.shape[1], TILE_N)
    pid_m, pid_n = swizzle_2d(ct.bid(0), num_m, num_n, GROUP_SIZE_M)

    expert = ct.load(expert_ids, (pid_m,), shape=())
    # expert -1 (padding past num_tokens_post_padded, or another rank's expert): the block does
    # nothing at all. (Written as an `if` around the body rather than an early `return`: inside
    # a helper function the return costs the compiler extra instructions.)
    if (expert >= 0) & (expert < W.shape[0]):
        replicas = ct.load(sorted_token_ids, (pid_m,), shape=(TILE_M,))
        valid = replicas < C.shape[0]                 # sentinel T*K marks padding slots
        a_rows = replicas // ROW_DIV
        k_cols = ct.arange(TILE_K, dtype=ct.int32)

        acc = ct.full((TILE_M, TILE_N), 0.0, dtype=ct.float32)
        for kt in range(ct.cdiv(A.shape[1], TILE_K)):
            # (TILE_M, TILE_K) token rows; sentinel rows and the Kd edge read as 0
            # (out-of-range gathers read padding_value anyway; the explicit mask says what is
            # meant and keeps the emulator's strict mode quiet)
            k_idx = kt * TILE_K + k_cols
            a = ct.gather(A, (a_rows[:, None], k_idx[None, :]),
                          mask=valid[:, None] & (k_idx < A.shape[1])[None, :], padding_value=0)
            if TRANSPOSE_B:
                # (for measurement) load W's (TILE_N, TILE_K) tile as stored, transpose it
                b = ct.load(W, (expert, pid_n, kt), shape=(1, TILE_N, TILE_K),
                            padding_mode=ct.PaddingMode.ZERO)
                b = ct.transpose(b.reshape((TILE_N, TILE_K)))
            else:
                # W[e, n, k] arrives as b[k, n]: order=(0, 2, 1) swaps the last two axes of
                # the tile space, so the tile is already (TILE_K, TILE_N) for the MMA
                b = ct.load(W, (expert, kt, pid_n), shape=(1, TILE_K, TILE_N),
                            order=(0, 2, 1), padding_mode=ct.PaddingMode.ZERO)
                b = b.reshape((TILE_K, TILE_N))
            acc = ct.mma(a, b, acc)

        if MUL_ROUTED_WEIGHT:
            w = ct.gather(topk_weights, replicas, mask=valid, padding_value=0)
            acc = acc * w[:, None]

        n_cols = pid_n * TILE_N + ct.arange(TILE_N, dtype=ct.int32)
        ct.scatter(C, (replicas[:, None], n_cols[None, :]), acc.astype(C.dtype),
                   mask=valid[:, None])


@ct.kernel
def fused_moe_kernel(A, W, C, topk_weights, sorted_token_ids, expert_ids,
                     ROW_DIV: ConstInt, MUL_ROUTED_WEIGHT: ConstBool,
                     TILE_M: ConstInt, TILE_N: ConstInt, TILE_K: ConstInt,
                     GROUP_SIZE_M: ConstInt, TRANSPOSE_B: ConstBool):
    """The fused MoE GEMM (see ``fused_moe_tile``); 1-D grid of num_m * cdiv(N, TILE_N)
    blocks. W indexed with int32: for weights of fewer than 2**31 elements."""
    fused_moe_tile(A, W, C, topk_weights, sorted_token_ids, expert_ids, ROW_DIV,
                   MUL_ROUTED_WEIGHT, TILE_M, TILE_N, TILE_K, GROUP_SIZE_M, TRANSPOSE_B)


@ct.kernel
def fused_moe_kernel_int64(A, W: ct.IndexedWithInt64, C, topk_weights, sorted_token_ids,
                           expert_ids, ROW_DIV: ConstInt, MUL_ROUTED_WEIGHT: ConstBool,
                           TILE_M: ConstInt, TILE_N: ConstInt, TILE_K: ConstInt,
                           GROUP_SIZE_M: ConstInt, TRANSPOSE_B: ConstBool):
    """The same kernel with W's addresses computed in 64 bits, for weights of 2**31 elements
    or more (DeepSeek-V3: ``expert * stride`` reaches 7.5e9)."""
    fused_moe_tile(A, W, C, topk_weights, sorted_token_ids, expert_ids, ROW_DIV,
                   MUL_ROUTED_WEIGHT, TILE_M, TILE_N, TILE_K, GROUP_SIZE_M, TRANSPOSE_B)


@ct.kernel
def moe_sum_kernel(Y, topk_ids, expert_map, out, num_experts,
                   TOP_K: ConstInt, HAS_EXPERT_MAP: ConstBool,
                   TILE_T: ConstInt, TILE_H: ConstInt):
    """out[t] = sum_k Y[t*K + k] over the replicas that were computed (fp32 accumulation).

    A replica counts when its id is in [0, num_experts) and, with an expert map, maps to a
    local expert; the others' rows of Y were never written (their experts live on other ranks,
    or the id was -1) and are skipped, not read as zeros. Grid (cdiv(T, TILE_T),
    cdiv(H, TILE_H))."""
    tokens = ct.bid(0) * TILE_T + ct.arange(TILE_T, dtype=ct.int32)
    cols = ct.bid(1) * TILE_H + ct.arange(TILE_H, dtype=ct.int32)
    in_t = tokens < topk_ids.shape[0]
    in_h = cols < Y.shape[1]
    acc = ct.full((TILE_T, TILE_H), 0.0, dtype=ct.float32)
    for k in range(TOP_K):
        ids = ct.gather(topk_ids, (tokens, k), mask=in_t, padding_value=-1)
        used = (ids >= 0) & (ids < num_experts)
        if HAS_EXPERT_MAP:
            local = ct.gather(expert_map, ids, mask=used, padding_value=-1)
            used = used & (local >= 0)
        y = ct.gather(Y, ((tokens * TOP_K + k)[:, None], cols[None, :]),
                      mask=used[:, None] & in_h[None, :], padding_value=0)
        acc = acc + y.astype(ct.float32)
    ct.store(out, (ct.bid(0), ct.bid(1)), acc.astype(out.dtype))


# ---------------------------------------------------------------------------------------------
# Tile sizes
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TileConfig:
    tile_m: int = 64
    tile_n: int = 128
    tile_k: int = 64
    group_size_m: int = 8
    transpose_b: bool = False    # True: load W as stored + ct.transpose (for comparison only)

    def __post_init__(self):
        if not isinstance(self.transpose_b, bool):
            raise TypeError(f"TileConfig.transpose_b must be a bool, got {self.transpose_b!r}")
        for name in ("tile_m", "tile_n", "tile_k", "group_size_m"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"TileConfig.{name} must be a positive int, got {v!r}")
            if name != "group_size_m" and v & (v - 1):
                raise ValueError(f"TileConfig.{name} must be a power of two, got {v}")


def default_tile_config(num_tokens: int, top_k: int, num_experts: int,
                        dtype="float16") -> TileConfig:
    """The documented default rule.

    * ``tile_m``: an m-block holds replicas of ONE expert, so it should not be much larger than
      the replicas per expert, ``T*K/E``: 16 up to 16 of them (decode), 32 up to 32, else 64.
      Bigger blocks would only multiply zero padding.
    * small ``tile_m`` (decode) is weight-bandwidth bound: ``tile_n`` 64 gives twice the blocks
      to stream the weights, ``tile_k`` 128 moves more bytes per load;
      ``tile_m`` 64 (prefill) is compute bound: ``tile_n`` 128, ``tile_k`` 64 (a 64x128 fp32
      accumulator and double-buffered operands fit comfortably).
    * float32 operands are twice the bytes: ``tile_k`` is halved.
    * ``group_size_m`` 8, as in Triton's matmul tutorial.
    Notebook 05 / issue 6 autotunes these per GPU; this rule is the fallback."""
    per_expert = num_tokens * top_k / max(num_experts, 1)
    tile_m = 16 if per_expert <= 16 else 32 if per_expert <= 32 else 64
    tile_n, tile_k = (64, 128) if tile_m < 64 else (128, 64)
    if np.dtype(dtype).itemsize >= 4:
        tile_k //= 2
    return TileConfig(tile_m, tile_n, tile_k, 8)


# ---------------------------------------------------------------------------------------------
# Host wrappers
# ---------------------------------------------------------------------------------------------

_FLOAT_DTYPES = ("float16", "bfloat16", "float32")


def _dtype_name(a) -> str:
    return np.dtype(a.dtype).name


def _require_array(name, a, ndim, fn):
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise TypeError(f"{fn}: {name} must be a NumPy or CuPy array, got {type(a).__name__}")
    if a.ndim != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D, got shape {tuple(a.shape)}")


def _require_same_device(fn, **arrays):
    kinds = {name: device.is_gpu_array(a) for name, a in arrays.items() if a is not None}
    if len(set(kinds.values())) > 1:
        where = ", ".join(f"{n} on {'GPU' if g else 'CPU'}" for n, g in kinds.items())
        raise TypeError(f"{fn}: all arrays must be on the same device ({where})")


def _check_positive_int(fn, name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{fn}: {name} must be a positive int, got {v!r}")


INT32_MAX = 2**31 - 1


def needs_int64_indexing(shape, strides, config: TileConfig) -> bool:
    """Can an element offset of the weights, ``e*s0 + n*s1 + k*s2`` (strides in elements),
    pass int32 -- counting the padded part of the last tiles, up to one tile past each edge?
    Then ``fused_moe_matmul`` launches ``fused_moe_kernel_int64``. DeepSeek-V3's w1
    (256, 4096, 7168) needs it; Mixtral's (8, 28672, 4096) = 9.4e8 elements does not."""
    E, N, Kd = shape
    reach = ((E - 1) * strides[0] + (N - 1 + config.tile_n) * strides[1]
             + (Kd - 1 + config.tile_k) * strides[2])
    return reach > INT32_MAX


def fused_moe_matmul(a, w, sorted_token_ids, expert_ids, *, top_k: int, topk_weights=None,
                     mul_routed_weight: bool = False, out=None, config: TileConfig | None = None,
                     validate: bool = True):
    """One expert GEMM over all experts: ``out[r] = a[r // top_k] @ w[e(r)].T`` for every
    token replica ``r`` listed in ``sorted_token_ids`` (times ``topk_weights[r]`` when
    ``mul_routed_weight``).

    GEMM1 (gate+up): ``a`` = hidden states (T, H), ``w`` = w1 (E, 2I, H), ``top_k=K``.
    GEMM2 (down):    ``a`` = activations (T*K, I), ``w`` = w2 (E, H, I), ``top_k=1``,
    ``mul_routed_weight=True``.
    ``sorted_token_ids``/``expert_ids`` come from ``routing.align`` with ``tile_m ==
    config.tile_m``. ``out`` (a.shape[0] * top_k, N), allocated when None; rows of replicas
    not listed are left untouched. ``validate`` checks the expert ids' range (a host sync on the
    GPU; ``moe_forward`` passes False). Returns ``out``."""
    fn = "fused_moe_matmul"
    _require_array("a", a, 2, fn)
    _require_array("w", w, 3, fn)
    _require_array("sorted_token_ids", sorted_token_ids, 1, fn)
    _require_array("expert_ids", expert_ids, 1, fn)
    _check_positive_int(fn, "top_k", top_k)
    _require_same_device(fn, a=a, w=w, sorted_token_ids=sorted_token_ids, expert_ids=expert_ids,
                         topk_weights=topk_weights, out=out)
    for name, x in (("a", a), ("w", w)):
        if _dtype_name(x) not in _FLOAT_DTYPES:
            raise TypeError(f"{fn}: {name} has dtype {x.dtype}; supported: float16, float32 "
                            f"(bfloat16 on the CPU)")
    if a.dtype != w.dtype:
        raise TypeError(f"{fn}: a and w must have the same dtype, got {a.dtype} and {w.dtype}")
    if a.shape[1] != w.shape[2]:
        raise ValueError(f"{fn}: a has {a.shape[1]} columns but w is (E, N, Kd) with "
                         f"Kd={w.shape[2]}; they must match (w has shape {tuple(w.shape)})")
    for name, x in (("sorted_token_ids", sorted_token_ids), ("expert_ids", expert_ids)):
        if _dtype_name(x) != "int32":
            raise TypeError(f"{fn}: {name} must be int32, got {x.dtype}")
    config = config or TileConfig()
    if not isinstance(config, TileConfig):
        raise TypeError(f"{fn}: config must be a TileConfig, got {type(config).__name__}")
    if sorted_token_ids.shape[0] != expert_ids.shape[0] * config.tile_m:
        raise ValueError(f"{fn}: sorted_token_ids has {sorted_token_ids.shape[0]} entries but "
                         f"expert_ids has {expert_ids.shape[0]} blocks of tile_m="
                         f"{config.tile_m}; align() must be called with the same tile_m")
    xp = device.array_module(a)
    num_replicas = a.shape[0] * top_k
    N = w.shape[1]
    if out is None:
        out = xp.empty((num_replicas, N), dtype=a.dtype)
    else:
        _require_array("out", out, 2, fn)
        if tuple(out.shape) != (num_replicas, N) or out.dtype != a.dtype:
            raise ValueError(f"{fn}: out must be ({num_replicas}, {N}) {a.dtype}, got "
                             f"{tuple(out.shape)} {out.dtype}")
    if mul_routed_weight:
        if topk_weights is None:
            raise ValueError(f"{fn}: mul_routed_weight=True needs topk_weights")
        if topk_weights.size != num_replicas:
            raise ValueError(f"{fn}: topk_weights has {topk_weights.size} entries, expected one "
                             f"per replica ({num_replicas} = a.shape[0] * top_k)")
        if np.dtype(topk_weights.dtype).kind != "f":
            raise TypeError(f"{fn}: topk_weights must be floating point, got "
                            f"{topk_weights.dtype}")
        weights = topk_weights.reshape(-1).astype(xp.float32, copy=False)
    else:
        weights = xp.empty((1,), dtype=xp.float32)   # never read (and no fill kernel)
    if validate and expert_ids.shape[0]:
        e = device.to_numpy(expert_ids)
        bad = (e < -1) | (e >= w.shape[0])
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{fn}: expert_ids[{i}] = {int(e[i])} is not in [-1, "
                             f"{w.shape[0]}) (w holds {w.shape[0]} experts)")
    if num_replicas == 0 or N == 0 or expert_ids.shape[0] == 0:
        return out
    num_m = expert_ids.shape[0]
    grid = (num_m * ct.cdiv(N, config.tile_n),)
    strides = tuple(st // w.itemsize for st in w.strides)
    kernel = fused_moe_kernel_int64 if needs_int64_indexing(w.shape, strides, config) \
        else fused_moe_kernel
    device.launch(grid, kernel,
                  (a, w, out, weights, sorted_token_ids, expert_ids, int(top_k),
                   bool(mul_routed_weight), config.tile_m, config.tile_n, config.tile_k,
                   config.group_size_m, config.transpose_b))
    return out


def moe_sum(y, topk_ids, num_experts: int, *, expert_map=None, out=None,
            tile_t: int = 16, tile_h: int = 128):
    """``out[t] = sum_k y[t*K + k]`` over the replicas computed on this rank (see
    ``moe_sum_kernel``). ``y`` (T*K, H), ``topk_ids`` (T, K) int32 (global ids),
    ``num_experts`` = number of global experts. Returns ``out`` (T, H) in ``y``'s dtype."""
    fn = "moe_sum"
    _require_array("y", y, 2, fn)
    _require_array("topk_ids", topk_ids, 2, fn)
    _require_same_device(fn, y=y, topk_ids=topk_ids, expert_map=expert_map, out=out)
    T, K = topk_ids.shape
    if y.shape[0] != T * K:
        raise ValueError(f"{fn}: y has {y.shape[0]} rows, expected T*K = {T * K}")
    if _dtype_name(topk_ids) != "int32":
        raise TypeError(f"{fn}: topk_ids must be int32, got {topk_ids.dtype}")
    xp = device.array_module(y)
    H = y.shape[1]
    if out is None:
        out = xp.empty((T, H), dtype=y.dtype)
    elif tuple(out.shape) != (T, H) or out.dtype != y.dtype:
        raise ValueError(f"{fn}: out must be ({T}, {H}) {y.dtype}, got {tuple(out.shape)} "
                         f"{out.dtype}")
    has_map = expert_map is not None
    if has_map and (expert_map.ndim != 1 or _dtype_name(expert_map) != "int32"):
        raise TypeError(f"{fn}: expert_map must be a 1-D int32 array")
    emap = expert_map if has_map else xp.empty((1,), dtype=xp.int32)   # never read
    if T == 0 or H == 0:
        return out
    tile_h = min(tile_h, max(16, 1 << (H - 1).bit_length()))
    grid = (ct.cdiv(T, tile_t), ct.cdiv(H, tile_h))
    device.launch(grid, moe_sum_kernel, (y, topk_ids, emap, out, int(num_experts), int(K),
                                          has_map, int(tile_t), int(tile_h)))
    return out


def sass_instruction_count(cubin: bytes) -> int:
    """Number of machine (SASS) instructions in a cubin's ``.text.*`` sections: their size / 16,
    since every instruction is 16 bytes on sm_70 and newer. A static count (loops counted
    once) -- a quick, GPU-free way to compare two ways of writing the same kernel."""
    import struct
    if cubin[:4] != b"\x7fELF" or cubin[4] != 2:
        raise ValueError("not an ELF64 cubin")
    shoff = struct.unpack_from("<Q", cubin, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", cubin, shoff + i * shentsize) for i in range(shnum)]
    names_at = sections[shstrndx][4]
    total = 0
    for name_off, _type, _flags, _addr, _offset, size in sections:
        start = names_at + name_off
        if cubin[start:cubin.index(b"\0", start)].startswith(b".text"):
            total += size
    return total // 16


# ---------------------------------------------------------------------------------------------
# Compile cases (tests/test_compile.py compiles each for sm_80, sm_90, sm_100, sm_120)
# ---------------------------------------------------------------------------------------------

def gemm_compile_params(dtype, top_k: int, mul_routed_weight: bool, cfg: TileConfig, *,
                        int64: bool = False):
    """The parameters of ``fused_moe_kernel`` (``int64=True``: of ``fused_moe_kernel_int64``,
    whose W is indexed in 64 bits) for ``compile.export_cubin``; ``dtype`` a ct dtype of A, W
    and C."""
    mul = mul_routed_weight
    w = array(dtype, 3, index_dtype=ct.int64 if int64 else ct.int32)
    return [array(dtype, 2), w, array(dtype, 2),
            array(ct.float32, 1), array(ct.int32, 1), array(ct.int32, 1),
            top_k, mul, cfg.tile_m, cfg.tile_n, cfg.tile_k, cfg.group_size_m, cfg.transpose_b]


def compile_cases():
    """The specializations the notebooks and moe_forward launch: GEMM1 (gather // K, no weight)
    and GEMM2 (// 1, router weight) with the decode and prefill tile rules in float16, the
    decode rule in float32, and the top-k sum with and without an expert map."""
    cases = []
    for name, dt, phases in (("float16", ct.float16, (("decode", 4), ("prefill", 4096))),
                             ("float32", ct.float32, (("decode", 4),))):
        for phase, tokens in phases:
            cfg = default_tile_config(tokens, 8, 64, name)
            cases.append((f"gemm1_{name}_{phase}", fused_moe_kernel,
                          gemm_compile_params(dt, 8, False, cfg)))
            cases.append((f"gemm2_{name}_{phase}", fused_moe_kernel,
                          gemm_compile_params(dt, 1, True, cfg)))
    # DeepSeek-V3-sized weights (> 2**31 elements): the 64-bit-indexed kernel, prefill tiles
    cfg = default_tile_config(2048, 8, 256)
    cases.append(("gemm1_float16_prefill_int64", fused_moe_kernel_int64,
                  gemm_compile_params(ct.float16, 8, False, cfg, int64=True)))
    for has_map in (False, True):
        cases.append((f"moe_sum_float16_map{int(has_map)}", moe_sum_kernel,
                      [array(ct.float16, 2), array(ct.int32, 2), array(ct.int32, 1),
                       array(ct.float16, 2), scalar(ct.int32), 8, has_map, 16, 128]))
    return cases
