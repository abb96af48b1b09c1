"""moe_tutorial.records (GPU results recorded for the notebooks) and moe_tutorial.source."""
import json

import numpy as np
import pytest

from moe_tutorial import records, source


@pytest.fixture
def recorded_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "RECORDED_DIR", tmp_path)
    return tmp_path


def test_write_merges_sections_and_latest_picks_the_newest(recorded_dir):
    path = records.write("02_x", {"a": 1}, gpu="GPU One", cuda_tile="1.7", source="test")
    assert path == recorded_dir / "GPU_One.lessons.json"
    records.write("04_y", [1, 2], gpu="GPU One", cuda_tile="1.7", source="test")
    doc = json.loads(path.read_text())
    assert set(doc["sections"]) == {"02_x", "04_y"} and doc["gpu"] == "GPU One"
    older = {"format": "lessons-1", "gpu": "GPU Two", "sections": {"02_x": {
        "created": "2000-01-01T00:00:00+00:00", "cuda_tile": "1.0", "source": "s",
        "data": {"a": 0}}}}
    (recorded_dir / "GPU_Two.lessons.json").write_text(json.dumps(older))
    assert [r["gpu"] for r in records.recordings("02_x")] == ["GPU One", "GPU Two"]
    rec = records.latest("02_x")
    assert rec["data"] == {"a": 1}
    assert records.label(rec).startswith("RECORDED on GPU One, 20") and "cuda-tile 1.7" in \
        records.label(rec)
    assert records.latest("05_nothing") is None


def test_bench_runs_skip_lesson_files(recorded_dir):
    (recorded_dir / "G.json").write_text(json.dumps({"format": 1, "gpu": "G", "rows": [],
                                                     "created": "2026"}))
    records.write("s", 1, gpu="G", cuda_tile="1.7", source="t")
    assert [r["gpu"] for r in records.bench_runs()] == ["G"]


def test_missing_says_how_to_record(capsys):
    records.missing("04_profiles", "the profiles")
    out = capsys.readouterr().out
    assert "no recording of the profiles" in out and "python -m moe_tutorial.records 04_profiles" in out


def test_committed_recordings_are_labelled():
    """Every committed section names its GPU, date, cuda-tile version and where it came from."""
    files = sorted(records.RECORDED_DIR.glob("*" + records.LESSONS_SUFFIX))
    assert files
    for path in files:
        doc = json.loads(path.read_text())
        assert doc["format"] == "lessons-1" and doc["gpu"]
        for name, entry in doc["sections"].items():
            assert entry["created"][:4].isdigit() and entry["source"] and "data" in entry, name


def test_profiles_from_the_recorded_benchmark_run():
    run = records.latest_bench_run()
    prof = records.profiles_from_bench(run)
    assert prof["copy_gbs"] > 0 and prof["matmul_tflops"] > 0 and prof["step_ms"]
    for point in prof["gemms"]:
        assert point["intensity"] > 0 and 0 < point["tflops"] < 2 * prof["matmul_tflops"]


def test_cli_rejects_unknown_sections():
    with pytest.raises(SystemExit):
        records.main(["no_such_section"])


def test_source_show_prints_an_excerpt(capsys):
    source.show(records.label, "version =", "return")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# moe_tutorial/records.py: label, lines")
    assert "version =" in out[1] and "return" in out[-1] and len(out) == 3
    with pytest.raises(ValueError, match="not in the source of label"):
        source.show(records.label, "no such text")


@pytest.mark.gpu
def test_division_table_on_the_gpu(tmp_path):
    """The GPU recording of notebook 02's table: every entry within the test tolerance, and
    the CLI merges it into the file it is given."""
    import cupy as cp
    table = records.division_table(cp)
    assert len(table) == 8 and all(np.isfinite(v) and v < 1 for v in table.values()), table
    out = tmp_path / "gpu.lessons.json"
    assert records.main(["02_division_table", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["sections"]["02_division_table"]["data"].keys() == \
        table.keys()
