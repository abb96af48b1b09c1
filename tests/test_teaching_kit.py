"""The instructor kit stays complete: notes for every notebook, every ct.* name in the cheat
sheet, the glossary's required terms, agendas that add up."""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "teaching"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _ct_names():
    names = set()
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            names |= set(re.findall(r"\bct\.([A-Za-z_][A-Za-z_0-9]*)", "".join(cell["source"])))
    return names - {"__version__"}


def test_every_notebook_has_instructor_notes():
    for nb in NOTEBOOKS:
        notes = KIT / "notes" / f"{nb.stem}.md"
        assert notes.is_file(), f"teaching/notes/{nb.stem}.md is missing"
        text = notes.read_text()
        for heading in ("## Goals", "## Questions to ask the room", "## Common mistakes",
                        "## CPU vs GPU"):
            assert heading in text, f"{notes.name} lacks {heading!r}"


def test_the_cheat_sheet_covers_every_ct_name_the_notebooks_use():
    sheet = (KIT / "cheatsheet.md").read_text()
    missing = sorted(n for n in _ct_names() if not re.search(rf"ct\.{n}\b", sheet))
    assert not missing, f"add to teaching/cheatsheet.md: {missing}"
    for line in sheet.splitlines():
        if line.startswith("| `ct.") or line.startswith("| `@ct."):
            assert "https://docs.nvidia.com/cuda/cutile-python/" in line, line
            assert re.search(r"\| 0[0-5]", line), f"no introducing notebook: {line}"


def test_the_glossary_defines_the_terms_the_series_relies_on():
    text = (KIT / "glossary.md").read_text().lower()
    for term in ("replica", "slot", "sentinel", "num_tokens_post_padded", "expert map",
                 "ridge point", "tma", "cta", "cluster", "occupancy", "swizzle", "tile",
                 "partial tile", "padding", "mask", "roofline", "cuda graph"):
        defined = re.search(rf"\*\*[^*]*{re.escape(term)}[^*]*\*\*", text)
        assert defined or f"`{term}`" in text, f"glossary lacks {term!r}"


def _minutes(table_rows):
    return sum(int(r[2]) for r in table_rows if r[2].strip().isdigit())


def test_the_three_hour_agenda_fills_three_hours():
    text = (KIT / "agenda.md").read_text()
    section = text.split("## The 3-hour session")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.split("|")] for line in section.splitlines()
            if re.match(r"\| \d:\d\d", line)]
    assert rows and _minutes(rows) == 180
    start = 0
    for r in rows:   # each row starts when the previous one ends
        h, m = map(int, r[1].split(":"))
        assert h * 60 + m == start, r
        start += int(r[2])
