"""The performance wing: the cost model (``roofline``), the benchmark's report and plumbing on the
CPU, the module structure and the names the notebooks use; under -m gpu the timing harness
(``timing``) and one real benchmark shape.

Performance itself is measured by ``python -m moe_tutorial.bench`` on a GPU, never asserted."""
import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

from moe_tutorial import bench, device, layer, presets, roofline, timing
from moe_tutorial.fused_moe import LayerConfig, TileConfig

ROOT = Path(__file__).resolve().parents[1]


def test_roofline_floor_arithmetic():
    """layer_cost / roofline_floor_ms (the benchmark, notebooks 04-05 and their checkers),
    against a hand count for Qwen3-30B-A3B decode: 64 tokens, all 128 experts used."""
    flops, nbytes = roofline.layer_cost(64, 2048, 768, 8, 128, 2)
    assert flops == 2 * 64 * 8 * 3 * 2048 * 768                  # 4.83 GFLOP
    assert nbytes == (128 * 3 * 2048 * 768 + 2 * 64 * 2048) * 2   # 1.21 GB: the weights
    # memory-bound at 3350 GB/s: 1.2084e9 B / 3.35e12 B/s = 0.3607 ms
    assert roofline.roofline_floor_ms(flops, nbytes, 989.0, 3350.0) == \
        pytest.approx(nbytes / 3350e9 * 1e3)
    assert roofline.roofline_floor_ms(1e12, 1.0, 1.0, 1.0) == pytest.approx(1e3)
    g = roofline.gemm_costs(64, 2048, 768, 8, 128)
    assert sum(f for f, _ in g.values()) == flops
    fused = roofline.gemm_costs(64, 2048, 768, 8, 128, fused_swiglu=True)
    assert list(fused) == [layer.FUSED_STEP, roofline.GEMM2_STEP]
    (f1, b1), (f1f, b1f) = g[roofline.GEMM1_STEP], fused[layer.FUSED_STEP]
    assert f1 == f1f and b1 - b1f == 64 * 8 * 768 * 2             # writes (T*K, I), not 2I


def test_the_issue_floors_are_reproduced():
    """The issue's floor column (785 TFLOP/s, 2866 GB/s): 0.418 ms for Qwen3 decode (memory;
    127 of the 128 experts drew a token there), 3.679 ms for Mixtral prefill (compute), 7.888
    ms for DeepSeek-V3 prefill (memory, all experts)."""
    for dims, used, want in (((64, 2048, 128, 768, 8), 127, 0.418),
                             ((4096, 4096, 8, 14336, 2), 8, 3.679),
                             ((2048, 7168, 256, 2048, 8), 256, 7.888)):
        T, H, E, I, K = dims
        floor = roofline.roofline_floor_ms(*roofline.layer_cost(T, H, I, K, used), 785.0, 2866.0)
        assert floor == pytest.approx(want, rel=2e-3)


def test_intermediate_traffic_halves_with_the_fused_epilogue():
    unfused = roofline.intermediate_bytes(64, 8, 768, fused_swiglu=False)
    fused = roofline.intermediate_bytes(64, 8, 768, fused_swiglu=True)
    assert unfused == (2 * 512 * 1536 + 2 * 512 * 768) * 2       # write+read 2I, write+read I
    assert fused == 2 * 512 * 768 * 2 and unfused == 3 * fused


def test_the_floor_guess_uses_the_expected_number_of_experts():
    assert roofline.expected_experts_used(1, 8, 128) == pytest.approx(8)
    assert roofline.expected_experts_used(4096, 8, 128) == pytest.approx(128)
    want = roofline.roofline_floor_ms(*roofline.layer_cost(64, 2048, 768, 8, 126), 785, 2900)
    assert roofline.floor_guess_ms((64, 2048, 128, 768, 8)) == pytest.approx(want)


def test_the_cost_model_and_the_tables_step_names_agree():
    """gemm_costs is keyed by the layer's step names (the benchmark's per-step split)."""
    plan = layer.plan_layer(np.zeros((2, 32), np.float32), np.zeros((2, 32, 32), np.float32),
                            np.zeros((2, 32, 16), np.float32), np.zeros((2, 2), np.float32), 1,
                            config=LayerConfig(TileConfig(16, 16, 16), TileConfig(16, 16, 16),
                                               sorted_rows=False))
    names = [n for n, _ in plan.steps]
    assert set(roofline.gemm_costs(2, 32, 16, 1, 2)) <= set(names)


def test_on_the_cpu_it_says_it_needs_a_gpu(capsys):
    if device.gpu_status()[0]:
        pytest.skip("a GPU is present: the benchmark would run for minutes")
    for argv in ([], ["--tune"], ["--shape", "1,2,3,4,2"], ["--compare-sample-dir", "x"]):
        assert bench.main(argv) == 0
        assert "needs a GPU" in capsys.readouterr().out
    from moe_tutorial import bench_routing
    assert bench_routing.main([]) == 0 and "needs a GPU" in capsys.readouterr().out


def test_shape_specs():
    s = presets.shape_from_spec("2048, 7168,256,2048,8")
    assert s.preset is presets.PRESETS["deepseek_v3"] and s.preset.grouped and s.tokens == 2048
    assert presets.shape_from_spec("110,1024,16,512,4").preset is \
        presets.BENCH_MOE_PRESETS["bench_moe_e16"]
    c = presets.shape_from_spec("10,64,4,32,2")
    assert c.dims == (10, 64, 4, 32, 2) and not c.preset.grouped and c.preset.renormalize
    for bad, match in (("1,2,3", "five integers"), ("1,2,3,4,x", "five integers"),
                       ("1,2,3,4,5", "K <= E"), ("0,2,3,4,1", ">= 1")):
        with pytest.raises(ValueError, match=match):
            presets.shape_from_spec(bad)
    assert [s.dims for s in presets.BENCH_SHAPES] == [
        (48, 512, 64, 1024, 8), (110, 1024, 16, 512, 4), (256, 2048, 1408, 32, 6),
        (64, 2048, 128, 768, 8), (4096, 2048, 128, 768, 8), (16, 4096, 8, 14336, 2),
        (4096, 4096, 8, 14336, 2), (2048, 7168, 256, 2048, 8)]
    assert [s.name for s in bench._shapes(None, ["mixtral"])] == ["mixtral_8x7b decode",
                                                                 "mixtral_8x7b prefill"]


def _row(floor=1.0, **variants):
    v = {k: ({"ms": ms, "rel_err": 1e-4, "ok": True} if isinstance(ms, float) else ms)
         for k, ms in variants.items()}
    return {"shape": "s", "dims": [64, 2048, 128, 768, 8], "experts_used": 128,
            "flops": 4.8e9, "bytes": 1.2e9, "floor_ms": floor, "variants": v}


def test_verdict_applies_the_issue_targets():
    met = bench.verdict(_row(1.0, fused=1.3, graph_fused=1.2, torch=2.0, sample_kernels=1.5))
    assert met == {"best": "graph_fused", "ratio": pytest.approx(1.2), "met": True, "why": ""}
    slow = bench.verdict(_row(1.0, fused=1.4, torch=1.3, sample_kernels=2.0))
    assert not slow["met"] and "1.40x floor > 1.25x" in slow["why"] and "torch" in slow["why"]
    small = bench.verdict(_row(0.05, fused=0.2, torch=0.3, sample_kernels=0.25))
    assert small["met"]                              # floor < 0.4 ms: only the peers count
    wrong = _row(1.0, fused={"ms": 0.5, "rel_err": 0.5, "ok": False}, default=1.6)
    assert bench.verdict(wrong)["best"] == "default"  # a wrong result never counts
    none = bench.verdict(_row(1.0, fused={"error": "boom"}, torch=1.0))
    assert not none["met"] and "no variant" in none["why"]


def test_report_table_and_limits():
    rows = [_row(1.0, fused=1.3, graph_fused=1.1, torch={"error": "RuntimeError: >1024 groups"},
                 sample_kernels=1.5, sample_e2e={"skipped": "time budget"})]
    rows[0]["verdict"] = bench.verdict(rows[0])
    rows[0]["steps_us"] = {"router": 10.0, "align": 20.0, layer.FUSED_STEP: 600.0,
                           "gemm2 (down, x weight)": 400.0, "sum over top-k": 70.0}
    rows[0]["steps_of"] = "graph_fused"
    assert "sample-style peer" in bench.summary_table(rows, "Test GPU")   # an old recording
    rows[0]["sample_peer"] = bench.SAMPLE_PEER
    text = bench.summary_table(rows, "Test GPU")
    assert "cuTile sample (re-implemented): kernels" in text
    assert "Test GPU" in text and "| 1.000 | 1.100 (graph_fused) | 1.300 | n/a | 1.500 | error |" \
        in text and "| 1.10 | met |" in text
    why = bench.limits(rows[0], (3000.0, 800.0))
    assert "memory 0.400 ms vs compute 0.006 ms" in why and "router 10.0 us (1%)" in why
    assert "host launch overhead (eager - graph) 200 us" in why
    assert "TFLOP/s" in why.split(layer.FUSED_STEP)[1]
    line = bench._format_variant("fused", rows[0]["variants"]["fused"], 4.8e9, 1.2e9, 1.0)
    assert "1.300 ms" in line and "x  1.30 floor" in line
    assert "ERROR RuntimeError" in bench._format_variant("torch", rows[0]["variants"]["torch"],
                                                         1, 1, 1)


def test_recorded_results_and_plot(tmp_path, monkeypatch):
    rows = [_row(1.0, fused=1.3, torch=2.0, sample_kernels=1.5)]
    rows[0]["verdict"] = bench.verdict(rows[0])
    monkeypatch.setattr(bench, "RECORDED_DIR", tmp_path)
    bench.record_results(tmp_path / "GPU_A.json", "GPU A", (3000.0, 800.0), rows)
    (tmp_path / "junk.json").write_text("{")
    runs = bench.recorded_results()
    assert [r["gpu"] for r in runs] == ["GPU A"]
    assert runs[0]["ceilings"] == {"copy_gbs": 3000.0, "matmul_tflops": 800.0}
    assert runs[0]["rows"][0]["variants"]["fused"]["ms"] == 1.3
    assert json.loads((tmp_path / "GPU_A.json").read_text())["labels"] == bench.LABELS
    fig = bench.plot_roofline(runs[0]["rows"], (3000.0, 800.0), tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_parallel_warm_up_runs_and_stops_workers(capsys):
    """The worker processes are this module's own CLI (on the CPU they exit at once saying
    they need a GPU); a zero timeout kills them instead."""
    shape = presets.shape_from_spec("4,16,2,8,1")
    logs = []
    bench.warm_in_parallel("bench", [shape, shape], 2, 120.0, log=logs.append)
    assert "compiled kernels for 2 shapes" in logs[-1] and "did not finish" not in logs[-1]
    logs.clear()
    bench.warm_in_parallel("tune", [shape], 1, 0.0, log=logs.append)
    assert any("stopped after 0 s" in s for s in logs) and "did not finish" in logs[-2]
    bench.warm_in_parallel("bench", [shape], 0, 10.0, log=logs.append)   # jobs=0: nothing


@pytest.mark.gpu
def test_bench_shape_on_a_small_layer():
    """Every variant and peer of one small shape runs, is checked and timed (or reports an
    error row instead of raising); our variants are correct."""
    import cupy as cp
    shape = presets.shape_from_spec("24,256,8,128,2")
    bw, peak = bench.measure_ceilings(cp, copy_bytes=1 << 26, matmul_n=2048)
    assert bw > 0 and peak > 0
    out = []
    row = bench.bench_shape(shape, (bw, peak), log=out.append)
    assert set(row["variants"]) == set(bench.OURS) | set(bench.PEERS)
    for key in ("graph_fused", "fused", "default", "gather", "fused_tb", "sample_kernels",
                "sample_e2e", "cupy_loop"):
        assert row["variants"][key]["ok"], (key, row["variants"][key])
    assert row["verdict"]["best"] in bench.OURS
    gather = row["steps_of"] == "gather"
    assert set(row["steps_us"]) == {n for n, _ in layer.plan_layer(
        cp.zeros((1, 256), cp.float16), cp.zeros((8, 256, 256), cp.float16),
        cp.zeros((8, 256, 128), cp.float16), cp.zeros((1, 8), cp.float32), 2,
        config=LayerConfig(TileConfig(), TileConfig(), sorted_rows=not gather),
        fused_swiglu=row["steps_of"] in bench.FUSED).steps}
    assert any("floor" in line for line in out)
    assert np.isfinite(row["floor_ms"]) and row["floor_ms"] > 0


def test_warm_parts_split_a_shapes_candidates_as_memory_allows():
    """The tuner's warm-up splits one shape's candidates over the jobs, but never more copies
    of the weights than fit in WARM_GPU_BYTES (DeepSeek-V3's 22.5 GB: 2)."""
    small = presets.shape_from_spec("24,256,8,128,2")
    deepseek = [s for s in presets.BENCH_SHAPES if s.name == "deepseek_v3 prefill"][0]
    assert bench.warm_parts("tune", [small], 6) == [(small, i, 6) for i in range(6)]
    assert bench.warm_parts("tune", [deepseek], 6) == [(deepseek, 0, 2), (deepseek, 1, 2)]
    assert bench.warm_parts("tune", [small, deepseek], 2) == [(small, 0, 1), (deepseek, 0, 1)]
    assert bench.warm_parts("bench", [small], 6) == [(small, 0, 1)]


# ---------------------------------------------------------------------------------------------
# Module structure and the names the notebooks use
# ---------------------------------------------------------------------------------------------

def _imported_modules(path: Path) -> set[str]:
    """Every ``moe_tutorial`` module a source file imports (at any depth of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = node.module or ""
        if node.level == 0 and not base.startswith("moe_tutorial"):
            continue
        base = base.removeprefix("moe_tutorial").lstrip(".")
        found |= {base.split(".")[0]} if base else {a.name for a in node.names}
    return found


def test_the_wing_has_no_import_loops():
    """tuning (imported by the layer) never imports the layer; the cost model and the timers
    import no benchmark; the benchmark's peer imports no layer."""
    pkg = ROOT / "moe_tutorial"
    assert {"layer", "tuning"} <= _imported_modules(pkg / "autotune.py")    # the scan works
    assert "layer" not in _imported_modules(pkg / "tuning.py")
    for name in ("roofline", "timing", "sample_peer"):
        assert not {m for m in _imported_modules(pkg / f"{name}.py") if m.startswith("bench")}
    assert "layer" not in _imported_modules(pkg / "sample_peer.py")


def _notebook_uses():
    """``(notebook, module, attribute)`` for every ``alias.attribute`` a notebook code cell uses
    where ``alias`` is a module of the performance wing imported from moe_tutorial."""
    wing = {"bench", "bench_activation", "bench_routing", "tuning", "timing", "roofline",
            "sample_peer", "autotune"}
    for path in sorted((ROOT / "notebooks").rglob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        src = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        aliases = {}
        for names in re.findall(r"from moe_tutorial import ([^\n]+)", src):
            for item in names.strip("() ").split(","):
                parts = item.split(" as ")
                if parts[0].strip() in wing:
                    aliases[parts[-1].strip()] = parts[0].strip()
        for mod, names in re.findall(r"from moe_tutorial\.(\w+) import ([^\n]+)", src):
            if mod in wing:
                for item in names.strip("() ").split(","):
                    yield path.name, mod, item.split(" as ")[0].strip()
        for alias, mod in aliases.items():
            for attr in re.findall(rf"\b{alias}\.(\w+)", src):
                yield path.name, mod, attr


def test_every_name_the_notebooks_use_exists():
    import importlib
    uses = list(_notebook_uses())
    assert uses, "no notebook uses the performance wing: the scan is broken"
    missing = [(nb, mod, attr) for nb, mod, attr in uses
               if not hasattr(importlib.import_module(f"moe_tutorial.{mod}"), attr)]
    assert not missing, missing


def test_old_names_are_the_harness_itself():
    """bench's old timers and cost model are the shared ones, not copies."""
    assert bench.time_ms is timing.median_ms and bench.time_graphs_ms is timing.graph_ms
    assert bench.measure_ceilings is timing.measure_ceilings
    assert bench.layer_cost is roofline.layer_cost and bench.plot_roofline is roofline.plot_roofline
    from moe_tutorial import bench_activation, bench_routing
    assert bench_activation.copy_bandwidth_gbs is timing.copy_bandwidth_gbs
    assert bench_routing.host_us is timing.host_us


def test_parse_args_keeps_logic_out():
    a = bench.parse_args(["--only", "qwen3", "--jobs", "0", "--compare-sample-dir", "x"])
    assert [s.name for s in a.shapes] == ["qwen3_30b_a3b decode", "qwen3_30b_a3b prefill"]
    assert a.jobs == 0 and a.compare_sample_dir == "x" and not a.tune
    assert bench.parse_args([]).jobs >= 1
    with pytest.raises(SystemExit):
        bench.parse_args(["--shape", "1,2,3"])


# ---------------------------------------------------------------------------------------------
# The timing harness on the GPU
# ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_eager_and_graph_timers_measure_the_same_kernel():
    """A copy of 64 MiB: eager median and graph replay are positive and agree within 2x (the
    graph has no host time; the kernel dominates), host time is positive, and the result of
    the last captured call is the one the replays wrote."""
    import cupy as cp
    src = cp.random.standard_normal(1 << 23, dtype=cp.float32)
    dst = cp.full_like(src, cp.nan)

    def copy():
        dst[...] = src
        return dst

    t = timing.eager(copy)
    assert t.gpu_ms > 0 and t.host_ms > 0
    ms, last = timing.capture_ms(copy, reps=4)
    assert 0 < ms < 2 * t.gpu_ms and 0 < t.gpu_ms < 2 * ms + 0.05
    cp.testing.assert_array_equal(last, src)
    assert timing.median_ms(copy, n_inner=3) > 0
    assert timing.host_us(copy, calls=5, rounds=2) > 0


@pytest.mark.gpu
def test_ceilings_are_plausible():
    bw, tflops = timing.measure_ceilings(copy_bytes=1 << 26, matmul_n=2048)
    assert 50 < bw < 20000 and 1 < tflops < 5000
