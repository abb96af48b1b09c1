"""The notebooks as reveal.js slides, offline.

    python -m teaching.slides tag      # set every cell's slide type from the headings (idempotent)
    python -m teaching.slides check    # exit 1 if a notebook's slide metadata is missing or stale
    python -m teaching.slides build [--execute]   # build/slides/NN_name.slides.html + reveal.js

Slide types come from the markdown headings, so re-running ``tag`` after anyone edits a notebook
gives the same result as tagging by hand would: a ``#`` or ``##`` heading starts a slide, ``###``
a sub-slide (reveal.js goes down), every other cell continues the current one. Long slides scroll.

``build`` exports with nbconvert's reveal.js template, minus everything that would come from a
CDN (require.js, jQuery, MathJax, Mermaid: the notebooks need none of them), and puts reveal.js
itself next to the HTML: the pinned npm tarball, fetched once with ``npm pack`` (or straight from
the npm registry when npm is not installed) and checked against its published sha512.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
OUT = ROOT / "build" / "slides"
TEMPLATE = Path(__file__).resolve().parent / "slides_template"

REVEAL_VERSION = "4.6.0"
REVEAL_TARBALL = f"https://registry.npmjs.org/reveal.js/-/reveal.js-{REVEAL_VERSION}.tgz"
REVEAL_SHA512 = ("QC80rYsZldAe95bW9VImucIPTjfsKhI0jRQrIOXU4P92ZyXb/dfw9L3EE96bN6i7UmeUl1qBieH4UNTr"
                 "25erYw==")
REVEAL_FILES = ("dist/reveal.js", "dist/reveal.css", "dist/theme/white.css",
                "plugin/notes/notes.js")


# ---- tagging ---------------------------------------------------------------------------------

def slide_type(cell) -> str:
    """``slide`` for a ``#``/``##`` heading, ``subslide`` for ``###``, else ``-`` (continue)."""
    if cell.cell_type == "markdown":
        first = cell.source.lstrip().split("\n", 1)[0]
        if first.startswith(("# ", "## ")):
            return "slide"
        if first.startswith("### "):
            return "subslide"
    return "-"


def tag(nb) -> bool:
    """Set every cell's slide type; True if anything changed."""
    changed = False
    for i, cell in enumerate(nb.cells):
        want = "slide" if i == 0 else slide_type(cell)
        if cell.metadata.get("slideshow", {}).get("slide_type") != want:
            cell.metadata.setdefault("slideshow", {})["slide_type"] = want
            changed = True
    return changed


def stale(paths=NOTEBOOKS) -> list[str]:
    """Notebooks whose slide metadata ``tag`` would change."""
    return [p.name for p in paths if tag(nbformat.read(p, as_version=4))]


def tag_files(paths=NOTEBOOKS) -> list[str]:
    changed = []
    for p in paths:
        nb = nbformat.read(p, as_version=4)
        if tag(nb):
            nbformat.write(nb, p)
            changed.append(p.name)
    return changed


# ---- reveal.js -------------------------------------------------------------------------------

def _tarball() -> bytes:
    if shutil.which("npm"):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["npm", "pack", "--silent", f"reveal.js@{REVEAL_VERSION}"], cwd=tmp,
                           check=True, stdout=subprocess.DEVNULL)
            return next(Path(tmp).glob("reveal.js-*.tgz")).read_bytes()
    with urllib.request.urlopen(REVEAL_TARBALL, timeout=60) as response:
        return response.read()


def fetch_reveal(dest: Path) -> Path:
    """reveal.js (pinned, checksum verified) unpacked at ``dest``; a no-op when already there."""
    if all((dest / f).exists() for f in REVEAL_FILES):
        return dest
    data = _tarball()
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != REVEAL_SHA512:
        raise RuntimeError(f"reveal.js {REVEAL_VERSION}: the tarball's sha512 does not match the "
                           "published one; not using it")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            name = member.name.split("/", 1)[-1]          # strip the "package/" prefix
            if member.isfile() and name.startswith(("dist/", "plugin/")):
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    return dest


# ---- export ----------------------------------------------------------------------------------

def export(path: Path, out_dir: Path, reveal_prefix: str = "reveal.js", execute=False) -> Path:
    """Write ``out_dir/<name>.slides.html`` for one notebook; ``execute`` runs it first (on
    this machine's backend) so the slides show outputs and plots."""
    from nbconvert import SlidesExporter
    exporter = SlidesExporter(extra_template_basedirs=[str(TEMPLATE.parent)],
                              template_name=TEMPLATE.name)
    exporter.reveal_url_prefix = reveal_prefix
    exporter.reveal_scroll = True
    exporter.reveal_theme = "white"   # its fonts ship with reveal.js; "simple" imports Google Fonts
    nb = nbformat.read(path, as_version=4)
    tag(nb)
    if execute:
        from nbconvert.preprocessors import ExecutePreprocessor
        ExecutePreprocessor(timeout=1800, kernel_name="python3").preprocess(
            nb, {"metadata": {"path": str(path.parent)}})
    html, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{path.stem}.slides.html"
    target.write_text(html, encoding="utf-8")
    return target


def build(paths=NOTEBOOKS, out_dir: Path = OUT, execute=False) -> list[Path]:
    fetch_reveal(out_dir / "reveal.js")
    return [export(p, out_dir, execute=execute) for p in paths]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m teaching.slides", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("tag", "check", "build"))
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/NN_*.ipynb")
    parser.add_argument("--execute", action="store_true",
                        help="build: run each notebook first so the slides show its outputs")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or NOTEBOOKS
    if args.command == "tag":
        changed = tag_files(paths)
        print(f"slide metadata updated in {len(changed)} notebook(s): {', '.join(changed)}"
              if changed else "slide metadata already up to date")
    elif args.command == "check":
        bad = stale(paths)
        if bad:
            print(f"slide metadata missing or stale in {', '.join(bad)}: run "
                  "`python -m teaching.slides tag`")
            return 1
        print(f"slide metadata up to date in {len(paths)} notebook(s)")
    else:
        for target in build(paths, execute=args.execute):
            print(f"wrote {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
        print(f"open {OUT / paths[0].stem}.slides.html in a browser (no network needed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
