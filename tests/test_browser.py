"""Browser smoke test: notebook 00, Run All in JupyterLab, in a real Chromium driven by Playwright.

Run it with ``make browser-test`` (it is not part of ``make test``). It needs a Chromium (or
Chrome) executable -- found on PATH as chromium / chromium-browser / google-chrome, or named by
``CHROMIUM`` -- and the ``playwright`` Python package; Playwright's own browser download is not
used. Checks: the kernel starts, every code cell runs, no cell has an error output, and the plots
are rendered as images the browser decoded.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "00_tiles.ipynb"
ENABLE = "MOE_TUTORIAL_BROWSER_TEST"

pytestmark = pytest.mark.skipif(os.environ.get(ENABLE) != "1",
                                reason=f"browser smoke test: run `make browser-test` ({ENABLE}=1)")


def _chromium() -> str | None:
    named = os.environ.get("CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser_tools():
    """(Chromium executable, playwright.sync_api), or skip saying what is missing."""
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set CHROMIUM=/path/to/it)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the playwright package is not installed "
                                          "(pip install playwright)")
    return executable, sync_api


@pytest.fixture
def lab(tmp_path, browser_tools):
    """A JupyterLab server on a copy of notebook 00; yields (url, notebook path on disk)."""
    work = tmp_path / "lab"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    port, token = _free_port(), "smoke-test-token"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), MPLBACKEND="module://"
        "matplotlib_inline.backend_inline", JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"))
    log = (tmp_path / "lab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", "--allow-root",
         f"--ServerApp.root_dir={work}", "--LabApp.news_url="],
        env=env, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text())
                time.sleep(0.5)
        yield f"{url}/lab/tree/{NOTEBOOK.name}?token={token}", work / NOTEBOOK.name
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_notebook_00_runs_all_in_jupyterlab(lab, browser_tools):
    executable, sync_api = browser_tools
    url, saved = lab
    code_cells = sum(c["cell_type"] == "code" for c in json.loads(NOTEBOOK.read_text())["cells"])
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable,
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        idle = ".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status='idle']"
        page.wait_for_selector(idle, state="attached", timeout=120_000)   # the kernel started
        page.click(".jp-NotebookPanel .jp-Notebook")                       # focus the notebook
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        # every code cell gets an execution count ("[n]:"), none stays queued or running ("[*]:")
        page.wait_for_function(
            """n => {
                const prompts = [...document.querySelectorAll(
                    '.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')].map(e => e.textContent);
                return prompts.length === n && prompts.every(t => /\\[\\d+\\]/.test(t));
            }""", arg=code_cells, timeout=300_000)
        errors = page.locator(".jp-NotebookPanel .jp-OutputArea-output"
                              "[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
        tracebacks = [e for e in errors if "Traceback" in e or "Error" in e.splitlines()[0]]
        images = page.eval_on_selector_all(
            ".jp-NotebookPanel .jp-OutputArea-output img",
            "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        page.screenshot(path=str(saved.parent / "lab.png"), full_page=False)
        page.keyboard.press("Control+s")
        time.sleep(2)
        browser.close()
    assert not tracebacks, "error outputs in the browser:\n" + "\n---\n".join(tracebacks)
    assert len(images) >= 3, f"expected the notebook's plots as images, found {len(images)}"
    assert all(done and w > 100 and h > 50 for done, w, h in images), \
        f"an image did not render: {images}"
    outputs = [o for c in json.loads(saved.read_text())["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"], "a cell saved an error output"


def test_slides_render_offline(browser_tools):
    executable, sync_api = browser_tools
    from teaching import slides
    html = slides.OUT / "00_tiles.slides.html"
    if not html.exists():
        pytest.skip("build the slides first: python -m teaching.slides build")
    fetched = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page()

        def only_local(route):
            fetched.append(route.request.url)
            if route.request.url.startswith("file:"):
                route.continue_()
            else:
                route.abort()

        page.route("**/*", only_local)
        page.goto(html.as_uri())
        page.wait_for_function("() => window.Reveal && Reveal.isReady()", timeout=30_000)
        total = page.evaluate("() => Reveal.getTotalSlides()")
        page.keyboard.press("ArrowRight")
        index = page.evaluate("() => Reveal.getIndices().h")
        browser.close()
    assert not [u for u in fetched if not u.startswith(("file:", "data:"))], fetched
    assert total >= 10 and index == 1
