"""Every notebook is committed clean (no outputs), with cell ids, the python3 kernel and a seed;
lesson notebooks follow the course template and have a worked-solutions notebook."""
import json
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ALL = sorted(p for p in NOTEBOOKS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
LESSONS = [p for p in ALL if p.parent == NOTEBOOKS]
SOLUTIONS = [p for p in ALL if p.parent == NOTEBOOKS / "solutions"]
LESSON_NAME = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb$")
SEED = re.compile(r"default_rng\(\s*(seed\s*=\s*)?\d+|\.seed\(\s*\d+|\bSEED\s*=\s*\d+")


def _ids(paths):
    return [str(p.relative_to(NOTEBOOKS)) for p in paths]


def _read(path):
    with open(path, encoding="utf-8") as f:
        return nbformat.read(f, as_version=nbformat.NO_CONVERT)


def _code(nb):
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def _markdown_headings(nb):
    return [line.strip() for c in nb.cells if c.cell_type == "markdown"
            for line in c.source.splitlines() if line.startswith("#")]


def test_there_are_notebooks():
    assert (NOTEBOOKS / "00_tiles.ipynb") in LESSONS
    assert all(p.parent in (NOTEBOOKS, NOTEBOOKS / "solutions") for p in ALL), \
        "notebooks live in notebooks/ or notebooks/solutions/"


@pytest.mark.parametrize("path", ALL, ids=_ids(ALL))
def test_format(path):
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["nbformat"] == 4 and raw["nbformat_minor"] >= 5, "needs nbformat 4.5+ (cell ids)"
    nb = _read(path)
    nbformat.validate(nb)
    spec = nb.metadata.get("kernelspec", {})
    assert spec.get("name") == "python3", f"kernelspec name is {spec.get('name')!r}"
    assert spec.get("display_name") == "Python 3"
    ids = [c.get("id") for c in nb.cells]
    assert all(ids), "every cell needs an id"
    assert len(set(ids)) == len(ids), "cell ids must be unique"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} has outputs: clear them before committing"
            assert cell.execution_count is None, f"cell {i} has an execution count"
    assert SEED.search(_code(nb)), "seed the random generator, e.g. np.random.default_rng(0)"


@pytest.mark.parametrize("path", LESSONS, ids=_ids(LESSONS))
def test_lesson_template(path):
    assert LESSON_NAME.match(path.name), "lesson notebooks are named NN_topic.ipynb"
    nb = _read(path)
    first = nb.cells[0]
    assert first.cell_type == "markdown", "the first cell is the markdown introduction"
    assert first.source.lstrip().startswith("# "), "the first cell starts with a # title"
    intro = first.source.lower()
    for needed in ("learning objectives", "prerequisites", "time", "next"):
        assert needed in intro, f"the first cell should mention {needed!r}"
    head_code = [c.source for c in nb.cells[:6] if c.cell_type == "code"]
    assert any("mt.describe()" in src for src in head_code), \
        "an early code cell prints mt.describe()"
    headings = _markdown_headings(nb)
    assert "## Summary" in headings and "## Exercises" in headings
    assert headings.index("## Summary") < headings.index("## Exercises")
    exercises = nb.cells[next(i for i, c in enumerate(nb.cells)
                              if c.cell_type == "markdown" and "## Exercises" in c.source):]
    assert any(c.cell_type == "code" and "mt.check." in c.source for c in exercises), \
        "exercises are checked with an mt.check.<name>(...) call"


@pytest.mark.parametrize("path", LESSONS, ids=_ids(LESSONS))
def test_lesson_has_solutions(path):
    solution = NOTEBOOKS / "solutions" / f"{path.stem}_solutions.ipynb"
    assert solution.exists(), f"missing {solution.relative_to(NOTEBOOKS.parent)}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=_ids(SOLUTIONS))
def test_solutions_match_a_lesson_and_assert_the_checks(path):
    assert path.stem.endswith("_solutions")
    lesson = NOTEBOOKS / f"{path.stem.removesuffix('_solutions')}.ipynb"
    assert lesson.exists(), f"{path.name} has no lesson {lesson.name}"
    assert re.search(r"assert\s+mt\.check\.\w+\(", _code(_read(path))), \
        "solutions assert on the checkers' return value: assert mt.check.<name>(...)"


# --- what a learner can trust: checked mechanically ------------------------------------------

DOCS = "https://docs.nvidia.com/cuda/cutile-python/"
FURTHER_READING = (DOCS, "github.com/NVIDIA/cutile-python/blob/main/samples/MoE.py",
                   "vllm-project/vllm/tree/main/vllm/model_executor/layers/fused_moe",
                   "triton-lang.org/main/getting-started/tutorials/03-matrix-multiplication")


def _text(nb):
    return "\n".join(c.source for c in nb.cells)


@pytest.mark.parametrize("path", ALL, ids=_ids(ALL))
def test_learner_text_has_no_tracker_talk_and_no_emoji_verdicts(path):
    text = _text(_read(path))
    assert not re.search(r"\bissues?\b", text, re.IGNORECASE), \
        "learner-facing text does not mention issues (the tracker is not part of the course)"
    assert "✅" not in text and "❌" not in text, "verdicts are the words PASS and FAIL"


@pytest.mark.parametrize("path", LESSONS, ids=_ids(LESSONS))
def test_lesson_ends_with_further_reading(path):
    nb = _read(path)
    last = [c for c in nb.cells if c.cell_type == "markdown"][-1]
    assert last.source.startswith("## Further reading"), "the last cell is ## Further reading"
    for link in FURTHER_READING:
        assert link in last.source, f"further reading links {link}"


def test_every_ct_operation_is_linked_before_its_first_use():
    """Walking the lessons in order, every ct.<op>(...) in a code cell has been linked to its
    page in the cuTile documentation by an earlier (or the same) markdown cell."""
    linked, missing = set(), []
    for path in LESSONS:
        for cell in _read(path).cells:
            if cell.cell_type == "markdown":
                linked |= set(re.findall(r"cuda\.tile\.(\w+)\.html", cell.source))
            else:
                missing += [f"{path.name}: ct.{op}" for op in
                            re.findall(r"\bct\.([a-z_]+)\(", cell.source) if op not in linked]
    assert not missing, f"used before a markdown cell links its documentation: {missing}"


@pytest.mark.parametrize("path", LESSONS, ids=_ids(LESSONS))
def test_package_source_is_shown_in_excerpts(path):
    code = _code(_read(path))
    assert "getsource" not in code, "show package code with mt.source.show(fn, first, last)"


@pytest.mark.parametrize("path", LESSONS, ids=_ids(LESSONS))
def test_checker_cells_print_and_echo_nothing(path):
    """A checker call is the cell's last statement, called bare: it prints PASS/FAIL and its
    Verdict displays nothing (tests/test_check.py checks that)."""
    for cell in _read(path).cells:
        if cell.cell_type == "code" and "mt.check." in cell.source:
            last = cell.source.rstrip().splitlines()[-1]
            assert re.match(r"mt\.check\.\w+\(", last), f"checker cell ends with {last!r}"
            assert "print(mt.check" not in cell.source


@pytest.mark.parametrize("path", LESSONS, ids=_ids(LESSONS))
def test_exercises_say_how_to_ask_for_a_hint(path):
    nb = _read(path)
    start = next(i for i, c in enumerate(nb.cells)
                 if c.cell_type == "markdown" and "## Exercises" in c.source)
    assert any("hint=1" in c.source for c in nb.cells[start:] if c.cell_type == "markdown")


def test_no_measured_number_is_typed_into_a_notebook_as_a_gpu_result():
    """GPU measurements come from moe_tutorial/recorded/ (or are measured live): no notebook
    carries a hand-typed table of recorded times."""
    for path in LESSONS:
        code = _code(_read(path))
        assert not re.search(r"RECORDED_\w+\s*=", code), f"{path.name}: typed recorded numbers"
        assert "Measured by us" not in _text(_read(path)), path.name
