"""Slides: metadata from headings (idempotent), an offline reveal.js export, pinned reveal.js."""
import io
import re
import tarfile
from html.parser import HTMLParser

import nbformat
import pytest

from teaching import slides


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(s) if kind == "md" else nbformat.v4.new_code_cell(s)
                for kind, s in cells]
    return nb


def test_slide_types_follow_the_headings_and_tagging_is_idempotent():
    nb = _nb(("md", "intro text"), ("md", "# Title"), ("code", "x = 1"), ("md", "## Section"),
             ("md", "plain"), ("md", "### Detail\nmore"), ("code", "# ## a comment, not a title"))
    assert slides.tag(nb) is True
    types = [c.metadata["slideshow"]["slide_type"] for c in nb.cells]
    assert types == ["slide", "slide", "-", "slide", "-", "subslide", "-"]
    assert slides.tag(nb) is False, "a second run changes nothing"
    nb.cells[4].source = "## Now a heading"
    assert slides.tag(nb) is True and nb.cells[4].metadata["slideshow"]["slide_type"] == "slide"


def test_every_notebook_carries_current_slide_metadata():
    assert slides.NOTEBOOKS, "no notebooks found"
    for path in slides.NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        missing = [i for i, c in enumerate(nb.cells) if "slide_type" not in
                   c.metadata.get("slideshow", {})]
        assert not missing, f"{path.name}: cells {missing} have no slide type; run " \
                            "`python -m teaching.slides tag`"
    assert slides.stale() == [], "run `python -m teaching.slides tag`"


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.sections, self.depth = [], 0, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.refs.append(a["src"])
        if tag == "link" and a.get("href"):
            self.refs.append(a["href"])
        if tag == "section":
            self.sections += self.depth == 0
            self.depth += 1

    def handle_endtag(self, tag):
        if tag == "section":
            self.depth -= 1


def test_the_slides_load_nothing_from_the_network(tmp_path):
    path = slides.NOTEBOOKS[0]
    html = slides.export(path, tmp_path).read_text()
    refs = _Refs()
    refs.feed(html)
    assert refs.refs, "reveal.js must be referenced"
    for ref in refs.refs:
        assert ref.startswith("reveal.js/"), f"{ref} is not the local reveal.js copy"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html.split("<main>")[0]), \
        "the page head loads something remote"
    assert "@import url(http" not in html
    nb = nbformat.read(path, as_version=4)
    slides.tag(nb)
    want = sum(c.metadata["slideshow"]["slide_type"] == "slide" for c in nb.cells)
    assert refs.sections == want, "one top-level section per slide"


def test_a_reveal_tarball_with_the_wrong_checksum_is_refused(tmp_path, monkeypatch):
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        body = b"alert('not reveal.js')"
        info = tarfile.TarInfo("package/dist/reveal.js")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    monkeypatch.setattr(slides, "_tarball", lambda: data.getvalue())
    with pytest.raises(RuntimeError, match="sha512"):
        slides.fetch_reveal(tmp_path / "reveal.js")
    assert not (tmp_path / "reveal.js" / "dist" / "reveal.js").exists()


def test_built_slides_have_their_reveal_files():
    html = sorted(slides.OUT.glob("*.slides.html"))
    if not html:
        pytest.skip("no slides built here: run `make slides` (or python -m teaching.slides build)")
    for name in slides.REVEAL_FILES:
        assert (slides.OUT / "reveal.js" / name).is_file(), name
