"""The real cuTile compiler as a test: every kernel the package exports, at the constants the
notebooks use, compiles to a cubin for every target architecture. No GPU needed (tileiras runs
on the CPU). Cases are separate tests so pytest-xdist spreads them over the workers."""
import struct

import pytest

from moe_tutorial.compile import ARCHS, KERNEL_MODULES, all_compile_cases, export_cubin

CASES = all_compile_cases()
ELF_MAGIC = b"\x7fELF"


def test_every_kernel_module_has_cases():
    modules = {case_id.split(".", 1)[0] for case_id, _, _ in CASES}
    assert modules == set(KERNEL_MODULES), f"modules without compile cases: " \
                                           f"{set(KERNEL_MODULES) - modules}"


def test_case_ids_are_unique():
    ids = [case_id for case_id, _, _ in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_compiles_to_cubin(case, arch):
    _, kernel, params = case
    cubin = export_cubin(kernel, params, arch)
    assert len(cubin) > 1024, f"suspiciously small cubin ({len(cubin)} bytes)"
    assert cubin[:4] == ELF_MAGIC
    # A CUDA ELF records its SM version in bits 8-15 of e_flags (offset 48 in a 64-bit header).
    e_flags = struct.unpack_from("<I", cubin, 48)[0]
    assert (e_flags >> 8) & 0xFF == int(arch.removeprefix("sm_")), f"e_flags {e_flags:#x}"
