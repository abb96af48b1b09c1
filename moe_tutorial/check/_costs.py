"""The layer cost model the checkers compare with (the package's one, in one place)."""
from ..roofline import intermediate_bytes, layer_cost, roofline_floor_ms  # noqa: F401
