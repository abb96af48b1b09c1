"""Exercise checkers for the notebooks: ``mt.check.<name>(your_code)``.

Each checker runs your code on fresh inputs (adversarial ones included), compares with a float64
reference and prints one line starting with PASS or FAIL that says what is wrong and where. Ask
again with ``hint=1`` for a nudge or ``hint=2`` for the recipe (or call ``mt.check.hint(name)``).
``core`` holds the skeleton every checker shares; there is one module per notebook.
"""
from .core import FLOAT_POISON, HINTS, INT_SENTINEL, Verdict, hint, picture
from .nb00_tiles import add_bias, axpy, num_tiles
from .nb01_routing import block_owners, expert_histogram, router_softmax
from .nb02_silu_and_mul import (geglu, gelu_tanh_reference, silu_and_mul_bytes,
                                silu_and_mul_row_loop)
from .nb03_fused_moe_matmul import moe_gather_rows, moe_scatter_weighted, moe_swizzle
from .nb04_moe_layer import moe_expert_map, moe_layer, moe_roofline_floor
from .nb05_performance import moe_intermediate_bytes, moe_slot_positions, moe_swiglu_gemm

__all__ = ["FLOAT_POISON", "HINTS", "INT_SENTINEL", "Verdict", "hint", "picture",
           "num_tiles", "axpy", "add_bias", "router_softmax", "expert_histogram", "block_owners",
           "silu_and_mul_bytes", "silu_and_mul_row_loop", "geglu", "gelu_tanh_reference",
           "moe_gather_rows", "moe_scatter_weighted", "moe_swizzle",
           "moe_layer", "moe_expert_map", "moe_roofline_floor",
           "moe_swiglu_gemm", "moe_intermediate_bytes", "moe_slot_positions"]
