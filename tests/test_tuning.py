"""The tuned-config tables: names, format checks, lookup with its fallbacks, the search space;
the committed tables themselves; and (under -m gpu) one real search with cuda.tile.tune."""
import json
import math

import numpy as np
import pytest

from moe_tutorial import presets, tuning
from moe_tutorial.fused_moe import LayerConfig, TileConfig, rule_tiles

SHAPE = dict(T=64, H=2048, E=128, I=768, K=8)
G1, G1S, G2 = TileConfig(16, 64, 128), TileConfig(16, 32, 256, latency=10), \
    TileConfig(16, 128, 128, occupancy=2)


def _entry(T=64, gemm1=G1, gemm1_swiglu=G1S, gemm2=G2, **shape):
    e = {"shape": {**SHAPE, "T": T, **shape}, "sorted_rows": True,
         "gemm2": tuning.config_to_dict(gemm2)}
    if gemm1 is not None:
        e["gemm1"] = tuning.config_to_dict(gemm1)
    if gemm1_swiglu is not None:
        e["gemm1_swiglu"] = tuning.config_to_dict(gemm1_swiglu)
    return e


def _write(tmp_path, entries, dtype="float16", name="table.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"format": 1, "gpu": "test GPU", "dtype": dtype,
                                "entries": entries}))
    return path


def test_file_names_follow_the_gpu_name():
    assert tuning.file_name("NVIDIA H100 80GB HBM3") == "NVIDIA_H100_80GB_HBM3.json"
    assert tuning.file_name("NVIDIA RTX PRO 6000 Blackwell (x)") == \
        "NVIDIA_RTX_PRO_6000_Blackwell_x.json"
    with pytest.raises(ValueError, match="cannot make a file name"):
        tuning.file_name(" -- ")


def test_config_dicts_round_trip_and_reject_unknown_keys():
    for cfg in (G1, G1S, G2, TileConfig(64, 256, 64, 16, num_ctas=2)):
        assert tuning.config_from_dict(json.loads(json.dumps(tuning.config_to_dict(cfg)))) == cfg
    with pytest.raises(ValueError, match="unknown tile config keys"):
        tuning.config_from_dict({**tuning.config_to_dict(G1), "warps": 4})
    with pytest.raises(ValueError, match="power of two"):
        tuning.config_from_dict({**tuning.config_to_dict(G1), "tile_n": 48})


@pytest.mark.parametrize("change, match", [
    (lambda t: t.update(format=2), "format-1"),
    (lambda t: t.pop("entries"), "no 'entries'"),
    (lambda t: t["entries"][0].pop("gemm2"), "entry 0: needs gemm2"),
    (lambda t: t["entries"][0]["shape"].pop("K"), "entry 0: 'K'"),
    (lambda t: t["entries"][0].update(gemm1=tuning.config_to_dict(TileConfig(32, 64, 64))),
     "entry 0: .*must match"),
])
def test_malformed_tables_are_rejected_with_the_reason(change, match):
    table = {"format": 1, "entries": [_entry()]}
    change(table)
    with pytest.raises(ValueError, match=match):
        tuning.validate_table(table)


def test_lookup_exact_nearest_and_fallbacks(tmp_path):
    path = _write(tmp_path, [_entry(T=64), _entry(T=4096, gemm1=TileConfig(64, 128, 64),
                                                  gemm1_swiglu=TileConfig(64, 64, 64),
                                                  gemm2=TileConfig(64, 128, 64, num_ctas=2))])
    dims = (SHAPE["H"], SHAPE["E"], SHAPE["I"], SHAPE["K"])
    look = lambda T, **kw: tuning.lookup(T, *dims, "float16", path=path, **kw)  # noqa: E731
    assert look(64) == LayerConfig(G1, G2)
    assert look(64, fused_swiglu=True) == LayerConfig(G1S, G2)
    assert look(200) == LayerConfig(G1, G2)                        # nearest in ratio: 64
    assert look(1500).tile_m == 64                                 # nearest: 4096
    assert look(4096 * 4) is not None and look(4096 * 4 + 100) is None   # > 4x away
    assert look(8) is None                                         # 64 / 8 > 4
    assert tuning.lookup(64, *dims, "float32", path=path) is None  # the table is float16
    assert tuning.lookup(64, 1024, 128, 768, 8, "float16", path=path) is None  # other H
    assert tuning.lookup(64, *dims, "float16", path=tmp_path / "missing.json") is None


def test_lookup_carries_the_layout_of_the_entry(tmp_path):
    """An entry tuned on the slot-order layer says so; one without the key was tuned for the
    gather/scatter layer (the first H100 table); a bad value is rejected."""
    old = _entry(T=64)
    del old["sorted_rows"]
    dims = (SHAPE["H"], SHAPE["E"], SHAPE["I"], SHAPE["K"])
    for entry, want in ((_entry(T=64), True), (old, False)):
        path = _write(tmp_path, [entry])
        assert tuning.lookup(64, *dims, "float16", path=path) == LayerConfig(G1, G2, want)
    with pytest.raises(ValueError, match="entry 0: LayerConfig.sorted_rows must be a bool"):
        tuning.validate_table({"format": 1, "entries": [{**_entry(), "sorted_rows": "yes"}]})


def test_lookup_needs_the_requested_gemm1_variant(tmp_path):
    path = _write(tmp_path, [_entry(gemm1=None)])
    dims = (64, SHAPE["H"], SHAPE["E"], SHAPE["I"], SHAPE["K"], "float16")
    assert tuning.lookup(*dims, path=path) is None
    assert tuning.lookup(*dims, fused_swiglu=True, path=path) == LayerConfig(G1S, G2)


def test_environment_variable_selects_or_disables_the_table(tmp_path, monkeypatch):
    path = _write(tmp_path, [_entry()])
    monkeypatch.setenv(tuning.ENV_TABLE, str(path))
    assert tuning.table_path() == path
    assert tuning.lookup(64, 2048, 128, 768, 8, "float16") == LayerConfig(G1, G2)
    monkeypatch.setenv(tuning.ENV_TABLE, "off")
    assert tuning.table_path() is None and tuning.lookup(64, 2048, 128, 768, 8, "float16") is None


def test_an_edited_table_is_read_again(tmp_path):
    path = _write(tmp_path, [_entry()])
    dims = (64, 2048, 128, 768, 8, "float16")
    assert tuning.lookup(*dims, path=path).gemm2 == G2
    g2 = TileConfig(16, 64, 64)
    _write(tmp_path, [_entry(gemm2=g2)])
    import os
    os.utime(path, (1, 1))                        # a different mtime, whatever the clock
    assert tuning.lookup(*dims, path=path).gemm2 == g2


def test_broken_tables_warn_once_and_are_ignored(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": 1, "entries": [{"shape": {}}]}))
    with pytest.warns(RuntimeWarning, match="entry 0"):
        assert tuning.lookup(64, 2048, 128, 768, 8, "float16", path=bad) is None
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tuning.lookup(64, 2048, 128, 768, 8, "float16", path=bad) is None


def test_write_table_round_trips(tmp_path):
    out = tmp_path / "sub" / "t.json"
    entries = [_entry(), _entry(T=4096)]
    tuning.write_table(out, "test GPU", entries, command="pytest")
    table, parsed = tuning.load_table(out)
    assert table["gpu"] == "test GPU" and table["format"] == 1 and len(parsed) == 2
    assert parsed[0]["cfg"] == {"gemm1": G1, "gemm1_swiglu": G1S, "gemm2": G2}
    assert not list(out.parent.glob("*.tmp"))
    with pytest.raises(ValueError, match="entry 0"):
        tuning.write_table(out, "x", [{"shape": SHAPE}])


def test_tile_m_choices_for_the_issue_shapes():
    got = {s.name: tuning.tile_m_choices(s.tokens, s.preset.top_k, s.preset.experts)
           for s in presets.BENCH_SHAPES}
    assert got == {"cutile_sample": [64, 128], "bench_moe_e16": [64, 128],
                   "bench_moe_e1408": [16, 64], "qwen3_30b_a3b decode": [64, 128],
                   "qwen3_30b_a3b prefill": [64, 128], "mixtral_8x7b decode": [64, 128],
                   "mixtral_8x7b prefill": [64, 128], "deepseek_v3 prefill": [64, 128]}


def test_candidates_start_with_the_default_rule_and_fit_the_problem():
    for tile_m, n, kd, per_expert, space in ((16, 1536, 2048, 1, tuning.SMALL_M),
                                             (64, 2048, 768, 4, tuning.MEMORY_BOUND),
                                             (128, 28672, 4096, 1024, tuning.COMPUTE_BOUND)):
        rule_n, rule_k = rule_tiles(tile_m)
        c = tuning.gemm_candidates(tile_m, n, kd, per_expert=per_expert)
        assert c[0] == TileConfig(tile_m, rule_n, rule_k, 8)
        assert len(c) == len(set(c)) >= len(space) and all(x.tile_m == tile_m for x in c)
        assert {(x.tile_n, x.tile_k) for x in c} >= {(tn, tk) for tn, tk, _ in space}
    assert TileConfig(128, 128, 64) in tuning.gemm_candidates(128, 1536, 2048, per_expert=4), \
        "the cuTile sample's tiles are always a candidate"
    small = tuning.gemm_candidates(16, 32, 2048, swiglu=True)     # E=1408: I = 32
    assert {c.tile_n for c in small} == {32} and len(small) == len(set(small))
    tiny_k = tuning.gemm_candidates(16, 2048, 32)                 # GEMM2 with I = 32
    assert {c.tile_k for c in tiny_k} == {32}
    plain = tuning.gemm_candidates(128, 4096, 4096, per_expert=100)
    swiglu = tuning.gemm_candidates(128, 4096, 4096, per_expert=100, swiglu=True)
    assert [c.tile_n // 2 for c in plain] == [c.tile_n for c in swiglu]   # half the columns
    assert [c.num_ctas for c in plain] == [c.num_ctas for c in swiglu]


def test_the_unfused_gemm1_config_doubles_the_swiglu_columns():
    w = TileConfig(64, 64, 128, 4, latency=10, num_ctas=2)
    assert tuning.unfused_from_swiglu(w, 1536) == TileConfig(64, 128, 128, 4, latency=10,
                                                              num_ctas=2)
    assert tuning.unfused_from_swiglu(TileConfig(16, 32, 64), 64).tile_n == 64
    assert tuning.unfused_from_swiglu(TileConfig(16, 64, 64), 64).tile_n == 64   # clamped


def test_shapes_are_tuned_in_order_of_their_floor():
    from moe_tutorial import bench
    floors = [bench.presets_floor_guess(s) for s in presets.BENCH_SHAPES]
    assert all(math.isfinite(f) and f > 0 for f in floors)
    by_name = dict(zip((s.name for s in presets.BENCH_SHAPES), floors))
    # the issue's floors (H100: 785 TFLOP/s, 2866 GB/s) -- ours uses 2900 GB/s, all experts
    assert by_name["deepseek_v3 prefill"] == pytest.approx(7.888, rel=0.03)
    assert by_name["mixtral_8x7b prefill"] == pytest.approx(3.679, rel=0.01)
    assert by_name["qwen3_30b_a3b decode"] == pytest.approx(0.418, rel=0.03)


COMMITTED = sorted(tuning.CONFIG_DIR.glob("*.json"))


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_tables_are_valid(path):
    """Every committed table parses, names its GPU after its file, holds float16 entries with
    consistent pairs, and covers the layers it was tuned for with a lookup that finds them."""
    table, entries = tuning.load_table(path)
    assert tuning.file_name(table["gpu"]) == path.name
    assert table["dtype"] == "float16" and entries
    for e in entries:
        s = e["shape"]
        got = tuning.lookup(s["T"], s["H"], s["E"], s["I"], s["K"], "float16", path=path,
                            fused_swiglu=True)
        assert got == LayerConfig(e["cfg"]["gemm1_swiglu"], e["cfg"]["gemm2"],
                                  e.get("sorted_rows", False))


@pytest.mark.gpu
def test_search_times_candidates_with_cuda_tile_tune():
    """One real search on a small layer: every candidate is timed (or reported failed), the
    best is one of them, and its output is right."""
    import cupy as cp
    from moe_tutorial import device, reference as ref
    shape = presets.shape_from_spec("32,256,8,128,2")
    prob, (weights, ids) = tuning.shape_problem(shape)
    h = ref.grouped_matmul(prob["hidden_states"], prob["w1"], ids, row_divisor=2)
    want = ref.silu_and_mul(h)
    for sorted_rows in (True, False):      # the layer's slot order (what is tuned), and not
        g = tuning.GemmProblem("gemm1_swiglu", prob, (weights, ids), None, 16, sorted_rows)
        cands = tuning.gemm_candidates(16, 128, 256, swiglu=True)[:3]
        res = tuning.search(g, cands)
        assert [c for c, _, _ in res["results"]] and res["best"] in cands
        assert all((us is None) != (err is None) for _, us, err in res["results"])
        g.out[...] = cp.nan
        device.launch(*g.launch_parts(res["best"]))
        got = g.out
        if sorted_rows:                    # row of replica r: its slot in sorted_ids
            s = g.sorted_ids.get()
            slot = np.full(ids.size, -1)
            placed = np.flatnonzero(s < ids.size)
            slot[s[placed]] = placed
            assert (slot >= 0).all()
            got = got[cp.asarray(slot)]
        assert ref.relative_error(got, want) < 2e-3
    del prob
    cp.get_default_memory_pool().free_all_blocks()


@pytest.mark.gpu
def test_the_fallback_timer_is_the_shared_harness(monkeypatch):
    """When cuda.tile.tune cannot run, ``search`` times the candidates with
    ``timing.median_ms``: every candidate gets a positive time, the best is one of them."""
    import cuda.tile as ct
    from moe_tutorial import timing
    shape = presets.shape_from_spec("32,256,8,128,2")
    prob, r = tuning.shape_problem(shape)
    g = tuning.GemmProblem("gemm2", prob, r, tuning.gemm2_input(prob, r, 16), 16)
    calls = []
    real = timing.median_ms
    monkeypatch.setattr(timing, "median_ms", lambda fn, **kw: calls.append(1) or real(fn, **kw))

    def broken(*args, **kwargs):
        raise RuntimeError("tuner unavailable")

    monkeypatch.setattr(ct.tune, "exhaustive_search", broken)
    cands = tuning.gemm_candidates(16, 256, 128)[:2]
    res = tuning.search(g, cands)
    assert len(calls) == len(cands) and res["best"] in cands
    assert all(us is not None and us > 0 for _, us, _ in res["results"])


def test_a_gpu_without_a_table_uses_one_of_its_architecture(monkeypatch, capsys):
    """A Hopper GPU with no table of its own gets the H100's sm_90 table, with a one-line note once;
    a GPU of another architecture gets none (the default rule)."""
    monkeypatch.delenv(tuning.ENV_TABLE, raising=False)
    monkeypatch.setattr(tuning, "_warned", set())
    monkeypatch.setattr(tuning, "gpu_name", lambda: "NVIDIA Hopper without a table")
    monkeypatch.setattr(tuning, "current_arch", lambda: "sm_90")
    path = tuning.table_path()
    assert path is not None and path.name == "NVIDIA_H100_80GB_HBM3.json"
    assert tuning.table_path() == path
    note = capsys.readouterr().out
    assert note.count("no tuned tile table for NVIDIA Hopper without a table") == 1 and "sm_90" in note
    monkeypatch.setattr(tuning, "current_arch", lambda: "sm_120")
    assert tuning.table_path() is None
    assert tuning.table_path("NVIDIA H100 80GB HBM3").name == "NVIDIA_H100_80GB_HBM3.json"
