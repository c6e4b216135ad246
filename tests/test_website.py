"""The website as a reader gets it: the smoke-profile site (built once per session, see ``conftest.py``)
served on 127.0.0.1 and driven by headless Chromium (Debian's ``chromium`` + ``chromium-driver``, set up by
``.ci/ensure_browser.sh``) through Selenium.

Checked: every page of the toc loads with no console error, no failed request and no request leaving
127.0.0.1; every figure of every page has loaded; equations are typeset by the offline MathJax; the
slider fallbacks (matplotlib ``to_jshtml`` animations) move when dragged or keyed and change the picture;
every internal link, image, script and stylesheet of the site resolves. Figures: each keeps its aspect ratio
in the column; the column is as wide as ``figures.COLUMN_PX`` says and ``figures.display_scale`` predicts the
size of a figure's text on screen; every page links the data of each figure it shows (``figures.figure_data``,
recorded in the kernel); every figure shows its text at >= ``plots.MIN_FONT`` pt and every chapter tags its
main figure. A full-page screenshot of each page is saved under ``$BNLIB_BUILD/screenshots/`` and
its path printed for the reader of the CI log.
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

from bnlib import book, figures, metric_registry, plots, report, results

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars",
    # Belt and braces: even if a page asked for another host, no name would resolve (the request is still
    # recorded in the performance log and fails the test below).
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)
WINDOW = (1280, 900)  # px
LOCAL_SCHEMES = ("data", "blob", "about", "chrome")  # "chrome": the browser's own pages, never the network
FIGURE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")
SCREENSHOT_MAX_HEIGHT = 12000  # px; longer pages are cut (the screenshot is for a glance, not an archive)

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- static checks of the files

class _PageRefs(HTMLParser):
    """Collects the ids/names a page defines and every URL it references, with the tag that holds it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: set[str] = set()
        self.refs: list[tuple[str, str, str]] = []  # (tag, rel, url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v for k, v in attrs if v is not None}
        self.anchors.update(values[k] for k in ("id", "name") if k in values)
        for attribute in ("href", "src"):
            if attribute in values:
                self.refs.append((tag, values.get("rel", ""), values[attribute]))


def _parse(page: Path) -> _PageRefs:
    parser = _PageRefs()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _site_pages(html: Path) -> list[Path]:
    return sorted(p for p in html.rglob("*.html") if p.relative_to(html).parts[0] not in ("_static", "_sources"))


def _is_fetched(tag: str, rel: str) -> bool:
    """Whether the browser loads this reference by itself (a plain ``<a href>`` is only followed on a click)."""
    return tag in ("script", "img", "iframe", "source", "video", "audio", "embed") or (
        tag == "link" and any(word in rel for word in ("stylesheet", "preload", "icon", "modulepreload")))


def test_every_internal_link_resolves_and_nothing_is_fetched_from_outside(smoke_site):
    parsed = {page: _parse(page) for page in _site_pages(smoke_site)}
    broken, fetched_outside, checked = [], [], 0
    for page, refs in parsed.items():
        for tag, rel, url in refs.refs:
            parts = urlsplit(url)
            if parts.scheme in ("mailto", "javascript", *LOCAL_SCHEMES):
                continue
            if parts.scheme or parts.netloc:
                if _is_fetched(tag, rel):
                    fetched_outside.append(f"{page.relative_to(smoke_site)}: <{tag}> {url}")
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            checked += 1
            if not target.is_file():
                broken.append(f"{page.relative_to(smoke_site)}: {url} (no file {target})")
            elif parts.fragment and target.suffix == ".html":
                anchors = parsed[target].anchors if target in parsed else _parse(target).anchors
                if unquote(parts.fragment) not in anchors:
                    broken.append(f"{page.relative_to(smoke_site)}: {url} (no anchor #{parts.fragment})")
    assert checked > 100, f"only {checked} internal references found: is the site complete?"
    assert not broken, "broken internal references:\n" + "\n".join(broken)
    assert not fetched_outside, "resources the browser would fetch from outside:\n" + "\n".join(fetched_outside)


# ----------------------------------------------------------------------------- the site in a browser

class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the site quietly and remembers every request answered with an error."""

    failures: list[str]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        self.failures.append(f"{code} {self.path}")
        super().send_error(code, message, explain)


@pytest.fixture(scope="module")
def server(smoke_site):
    """The site on ``http://127.0.0.1:<free port>/`` from a thread; yields (base URL, list of HTTP errors)."""
    failures: list[str] = []
    handler = type("Handler", (_Handler,), {"failures": failures})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(handler, directory=str(smoke_site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/", failures
    httpd.shutdown()
    httpd.server_close()


def start_chromium(profile_dir: Path):
    """Headless Debian Chromium through its chromedriver (no Selenium Manager, no download), with a fresh
    profile, recording console messages and network events."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    chrome.set_page_load_timeout(60)
    chrome.set_window_size(*WINDOW)
    chrome.get("about:blank")  # let the start page settle before the first visit
    return chrome


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        message = "Chromium or chromedriver is missing: run `bash .ci/ensure_browser.sh` (as root) first."
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    chrome = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield chrome
    chrome.quit()


@dataclass
class Visit:
    """What one page did in the browser."""

    document: str
    url: str
    console_errors: list[str] = field(default_factory=list)
    outside_requests: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)  # {src, loaded, width, height, shown_...} of the article's <img>
    math_nodes: int = 0        # Sphinx math elements (span.math, div.math)
    typeset: int = 0           # <mjx-container> elements made by MathJax
    math_errors: int = 0       # <mjx-merror> elements
    sliders: int = 0           # <input type=range>
    unrendered: list[str] = field(default_factory=list)  # MyST roles left as text, e.g. "{glue:text}`x`"
    screenshot: Path | None = None
    seconds: float = 0.0


def _wait(chrome, script: str, timeout: float = 30.0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(chrome, timeout, poll_frequency=0.1).until(lambda c: c.execute_script(script))


def _mathjax_done(chrome) -> None:
    chrome.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const startup = window.MathJax && window.MathJax.startup;
        if (startup && startup.promise) startup.promise.then(() => done(true), () => done(false));
        else done(null);""")


def _requests(performance_log: list[dict]) -> list[str]:
    """URLs of every request and websocket that the page opened, from Chromium's performance log."""
    urls = []
    for entry in performance_log:
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
        elif message["method"] == "Network.webSocketCreated":
            urls.append(message["params"]["url"])
    return urls


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in LOCAL_SCHEMES or parts.hostname == "127.0.0.1"


def _full_page_screenshot(chrome, path: Path) -> Path:
    """The whole page as a reader scrolling through it sees it: the window grown to the page's height."""
    height = chrome.execute_script("return document.documentElement.scrollHeight")
    chrome.set_window_size(WINDOW[0], min(max(height, WINDOW[1]), SCREENSHOT_MAX_HEIGHT))
    try:
        path.write_bytes(chrome.get_screenshot_as_png())
    finally:
        chrome.set_window_size(*WINDOW)
    return path


PAGE_STATE = r"""
    const article = document.querySelector('article') || document.querySelector('main') || document.body;
    return {
      images: Array.from(article.querySelectorAll('img')).map(i => (
        {src: i.src.slice(0, 80), loaded: i.complete && i.naturalWidth > 0, width: i.naturalWidth,
         height: i.naturalHeight, shown_width: i.getBoundingClientRect().width,
         shown_height: i.getBoundingClientRect().height})),
      math_nodes: document.querySelectorAll('span.math, div.math').length,
      typeset: document.querySelectorAll('mjx-container').length,
      math_errors: document.querySelectorAll('mjx-merror').length,
      sliders: document.querySelectorAll('input[type=range]').length,
      unrendered: article.innerText.match(/\{(glue|cite|doc|ref|numref|eq|math|term)(:[a-z]+)?\}`?[^`\s]*/g) || [],
    };"""


def visit(chrome, base_url: str, document: str, screenshots: Path) -> Visit:
    """Load one page, wait for its images and MathJax, record what happened and take a screenshot."""
    chrome.get_log("browser"), chrome.get_log("performance")  # forget the previous page's messages
    start = time.time()
    record = Visit(document, f"{base_url}{document}.html")
    chrome.get(record.url)
    _wait(chrome, "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)")
    _mathjax_done(chrome)
    record.seconds = time.time() - start
    for key, value in chrome.execute_script(PAGE_STATE).items():
        setattr(record, key, value)
    record.screenshot = _full_page_screenshot(chrome, screenshots / f"{document.replace('/', '__')}.png")
    record.console_errors = [e["message"] for e in chrome.get_log("browser") if e["level"] == "SEVERE"]
    record.outside_requests = [u for u in _requests(chrome.get_log("performance")) if not _is_local(u)]
    return record


@pytest.fixture(scope="module")
def visits(driver, server) -> dict[str, Visit]:
    """Every page of the toc, visited once in reading order."""
    base_url, _ = server
    screenshots = Path(os.environ["BNLIB_BUILD"]) / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    return {document: visit(driver, base_url, document, screenshots) for document in book.toc_documents(ROOT)}


def test_every_page_loads_without_console_errors_or_failed_requests(visits, server):
    problems = [f"{v.document}: {message}" for v in visits.values() for message in v.console_errors]
    assert not problems, "console errors:\n" + "\n".join(problems)
    _, http_failures = server
    assert not http_failures, "requests the server answered with an error:\n" + "\n".join(http_failures)


def test_no_myst_role_is_left_unrendered(visits):
    leftovers = [f"{v.document}: {text}" for v in visits.values() for text in v.unrendered]
    assert not leftovers, "MyST roles shown as text (inside backticks?):\n" + "\n".join(leftovers)


def test_no_request_leaves_localhost(visits):
    outside = [f"{v.document}: {url}" for v in visits.values() for url in v.outside_requests]
    assert not outside, "requests to other hosts than 127.0.0.1:\n" + "\n".join(outside)


def _figure_outputs(document: str) -> tuple[int, bool]:
    """(number of image outputs in the staged executed notebook, whether its source draws with matplotlib);
    (0, False) for a Markdown page."""
    staged = Path(os.environ["BNLIB_BUILD"]) / "book_src" / f"{document}.ipynb"
    if not staged.exists():
        return 0, False
    code = [c for c in nbformat.read(staged, as_version=4).cells if c.cell_type == "code"]
    images = sum(any(m in o.get("data", {}) for m in FIGURE_MIMES) for c in code for o in c.outputs)
    return images, any(word in c.source for c in code for word in ("plt.", "plots."))


def test_every_page_shows_its_figures(visits):
    problems = []
    for v in visits.values():
        problems += [f"{v.document}: image not loaded: {i['src']}" for i in v.images if not i["loaded"]]
        images, draws = _figure_outputs(v.document)
        if draws and not images:
            problems.append(f"{v.document}: the notebook draws but its executed copy holds no figure "
                            "(a non-inline matplotlib backend in the kernel?)")
        if sum(i["loaded"] for i in v.images) < images:
            problems.append(f"{v.document}: {images} figure outputs but {len(v.images)} images shown")
    assert not problems, "\n".join(problems)


def test_every_figure_keeps_its_aspect_ratio(visits):
    """A figure wider than the column is shrunk to it, height and all (not squeezed sideways)."""
    squeezed = [f"{v.document}: {i['src']} natural {i['width']}x{i['height']}, shown "
                f"{i['shown_width']:.0f}x{i['shown_height']:.0f}"
                for v in visits.values() for i in v.images
                if i["loaded"] and i["width"] > 0
                and abs(i["shown_height"] - i["shown_width"] * i["height"] / i["width"]) > 1.5]
    assert not squeezed, "figures shown at another aspect ratio than drawn:\n" + "\n".join(squeezed)


def test_equations_are_typeset_by_the_offline_mathjax(visits, smoke_site):
    assert (smoke_site / "_static" / "mathjax" / "tex-chtml.js").is_file()
    with_math = [v for v in visits.values() if v.math_nodes]
    assert with_math, "no page has an equation to check"
    for v in with_math:
        assert v.typeset >= v.math_nodes, f"{v.document}: {v.math_nodes} equations but {v.typeset} typeset"
        assert v.math_errors == 0, f"{v.document}: {v.math_errors} MathJax errors"


SLIDER_STATE = """
    const slider = arguments[0];
    const image = slider.closest('.animation') ? slider.closest('.animation').querySelector('img') : null;
    let hash = 0;  // of the picture's src (a data: URI of the frame): short to compare and to print
    for (const c of (image ? image.src : '')) hash = (hash * 31 + c.charCodeAt(0)) | 0;
    return {value: Number(slider.value), min: Number(slider.min), max: Number(slider.max),
            src: image && image.src ? hash : null};"""


def slider_problems(chrome, url: str) -> list[str]:
    """Load ``url`` and work each ``input[type=range]`` of a matplotlib ``to_jshtml`` animation as a reader
    would: Home key to the first frame, a mouse drag to the last, Home again. Returns what went wrong."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    chrome.get(url)
    _wait(chrome, "return document.readyState === 'complete'")
    problems = []
    for number, slider in enumerate(chrome.find_elements(By.CSS_SELECTOR, "input[type=range]")):
        where = f"{url} slider {number}"
        chrome.execute_script("arguments[0].scrollIntoView({block: 'center'})", slider)
        if not slider.is_displayed():
            problems.append(f"{where}: hidden (inside a collapsed cell?)")
            continue
        slider.send_keys(Keys.HOME)
        first = chrome.execute_script(SLIDER_STATE, slider)
        if not first["src"] or first["max"] <= first["min"]:
            problems.append(f"{where}: no animation picture, or a single frame: {first}")
            continue
        width = slider.size["width"]
        ActionChains(chrome).move_to_element_with_offset(slider, -width // 2 + 2, 0).click_and_hold() \
            .move_by_offset(width - 4, 0).release().perform()  # from the left end to the right end
        dragged = chrome.execute_script(SLIDER_STATE, slider)
        if dragged["value"] <= first["value"] or dragged["src"] == first["src"]:
            problems.append(f"{where}: dragging did not move it or did not change the picture: {first} -> {dragged}")
        slider.send_keys(Keys.HOME)
        back = chrome.execute_script(SLIDER_STATE, slider)
        if back != first:
            problems.append(f"{where}: the Home key did not bring the first frame back")
    return problems


def test_slider_fallbacks_move_and_change_the_picture(visits, driver):
    pages = [v for v in visits.values() if v.sliders]
    if not pages:
        pytest.skip("no page has a slider yet (the theory chapter's to_jshtml fallback will bring one)")
    problems = [problem for page in pages for problem in slider_problems(driver, page.url)]
    assert not problems, "\n".join(problems)


def test_screenshots_of_every_page_are_saved(visits, capsys):
    for v in visits.values():
        assert v.screenshot is not None and v.screenshot.stat().st_size > 10_000, v.document
    with capsys.disabled():
        print("\nWebsite screenshots (smoke profile):")
        for v in visits.values():
            print(f"  {v.document:32s} {v.seconds:5.1f} s  {v.screenshot}")


# ----------------------------------------------------------------------------- the reader's landing page

FOUND_STATE = r"""
    const section = document.getElementById('what-we-found');
    if (!section) return null;
    return {text: section.innerText,
            images: Array.from(section.querySelectorAll('img')).map(i => (
                {loaded: i.complete && i.naturalWidth > 0, width: i.naturalWidth, shown: i.width}))};"""


def _landing_page(visits, driver) -> None:
    driver.set_window_size(*WINDOW)
    driver.get(visits["intro"].url)
    _wait(driver, "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)")
    _mathjax_done(driver)


def test_landing_page_says_what_we_found_with_a_forest_plot(visits, driver):
    _landing_page(visits, driver)
    found = driver.execute_script(FOUND_STATE)
    assert found is not None, "the landing page has no 'What we found' section"
    for title, _ in metric_registry.CLAIMS.values():  # a paragraph per claim of the paper
        assert f"{title}. The paper claims that" in found["text"], title
    assert "After the same " in found["text"] and "At matched fit" in found["text"]
    assert "Δ = " in found["text"]  # the numbers behind the words
    assert found["images"], "no forest plot in 'What we found'"
    forest = found["images"][0]
    assert forest["loaded"], "the forest plot did not load"
    assert forest["width"] >= 2 * forest["shown"] * 0.9, f"not a 2x PNG: {forest}"  # sharp at 100% zoom


# The article's text as a reader reads it, without monospace (code, pre), equations and figures.
PROSE_TEXT = r"""
    const article = (document.querySelector('article') || document.body).cloneNode(true);
    article.querySelectorAll('code, pre, kbd, samp, .math, mjx-container, script, style, img')
        .forEach(e => e.remove());
    return article.innerText;"""


def test_landing_page_names_metrics_in_words(visits, driver):
    """No metric key (a word with underscores) and no "pct"/"fpr" outside monospace on the landing page."""
    _landing_page(visits, driver)
    prose = driver.execute_script(PROSE_TEXT)
    keys = sorted(set(re.findall(r"\b\w+_\w+\b", prose)))
    raw_words = sorted(set(re.findall(r"(?<![A-Za-z])(pct|fpr)(?![A-Za-z])", prose)))
    assert not keys, f"metric keys (or other identifiers) outside monospace on the landing page: {keys}"
    assert not raw_words, f"'pct'/'fpr' outside monospace on the landing page: {raw_words}"


FIRST_CLAIM = r"""
    window.scrollTo(0, 0);
    const section = document.getElementById('what-we-found');
    const first = Array.from(section ? section.querySelectorAll('p') : []).find(
        p => p.innerText.startsWith(arguments[0]));
    if (!first) return null;
    const box = first.getBoundingClientRect();
    return {top: box.top, bottom: box.bottom, height: window.innerHeight};"""


def test_landing_page_first_screen_shows_the_first_claim(visits, driver):
    _landing_page(visits, driver)
    title = next(iter(metric_registry.CLAIMS.values()))[0]
    box = driver.execute_script(FIRST_CLAIM, f"{title}.")
    assert box is not None, f"no paragraph starting {title!r} in 'What we found'"
    screen = min(box["height"], WINDOW[1])  # the viewport (the window less any browser chrome)
    assert 0 <= box["top"] and box["bottom"] <= screen, (
        f"the first claim's paragraph is not on the first {WINDOW[0]} x {WINDOW[1]} screen: {box}")


def test_every_reported_metric_has_a_registry_entry(smoke_site):
    """Every key `python -m bnlib report --json` emits for the smoke book has a name, meaning, unit, direction
    and family in ``bnlib.metric_registry``; the message names the keys that lack one."""
    table = report.headline(results.read_summaries("smoke"))
    assert len(table) > 20, f"only {len(table)} metrics in the smoke book's report"
    assert metric_registry.missing(table) == [], "metric keys without a registry entry (add a pattern)"


def test_no_tick_label_of_a_landing_page_figure_overlaps_another_label(smoke_site):
    """The landing page's own figures (the forest plot) and the chapter figure it shows (the memorization
    chapter's main figure): every tick label's box, measured by matplotlib's renderer when the figure was
    shown (``figures.label_overlaps``), overlaps no other label."""
    records = _page_data(smoke_site, "intro")["figures"]
    records += [r for r in _page_data(smoke_site, "chapters/memorization")["figures"] if r["main"]]
    assert len(records) >= 2, "the landing page shows fewer than two figures"
    overlaps = [f"{r['document']} figure {r['position']}: {pair}" for r in records
                for pair in r["tick_label_overlaps"]]
    assert not overlaps, "tick labels overlapping other labels:\n" + "\n".join(overlaps)


def test_every_chapter_links_its_data_file_and_shows_its_rerun_commands(smoke_site):
    for document in book.notebook_documents(ROOT):
        page = smoke_site / f"{document}.html"
        name = Path(document).name
        links = [url for tag, _, url in _parse(page).refs if tag == "a" and url.endswith(f"{name}.data.json")]
        assert links, f"{document}: no link to {name}.data.json"
        data = json.loads((page.parent / unquote(links[0])).read_text())
        assert data["result_set"] == "smoke" and isinstance(data["glued"], dict), document
        if book.is_result_page(document, ROOT) or "write_summary" not in (ROOT / f"{document}.ipynb").read_text():
            continue  # a page that stores no measurements (the results pages, the profiles' table)
        assert data["summary"] and data["summary"]["result_set"] == "smoke", f"{document}: no summary in its data"
        text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))  # the code block's text, without highlighting
        assert f"python -m bnlib run {name} -p profile smoke" in text, f"{document}: no re-run command"
        assert f"papermill {document}.ipynb" in text, f"{document}: no papermill command"


# ----------------------------------------------------------------------------- figures: data and readability

def _page_data(smoke_site: Path, document: str) -> dict:
    """The data JSON a page links (``book.data_file_name``)."""
    page = smoke_site / f"{document}.html"
    name = book.data_file_name(document)
    links = [url for tag, _, url in _parse(page).refs if tag == "a" and url.endswith(name)]
    assert links, f"{document}: no link to {name}"
    return json.loads((page.parent / unquote(links[0])).read_text())


def _marked_outputs(document: str) -> tuple[dict[int, tuple[int, int]], list[tuple[int, int]]]:
    """In the staged notebook: {record position: (cell, output)} of the figure outputs, and the (cell, output)
    of the PNG outputs that carry no record's mark."""
    staged = Path(os.environ["BNLIB_BUILD"]) / "book_src" / f"{document}.ipynb"
    marked, unmarked = {}, []
    for number, cell in enumerate(nbformat.read(staged, as_version=4).cells):
        for index, output in enumerate(cell.get("outputs", []) if cell.cell_type == "code" else []):
            if "image/png" in output.get("data", {}):
                mark = output.get("metadata", {}).get("image/png", {}).get(book.FIGURE_MARK)
                if mark is None:
                    unmarked.append((number, index))
                else:
                    marked[int(mark)] = (number, index)
    return marked, unmarked


def test_every_page_links_the_data_of_every_figure_it_shows(smoke_site):
    """One record per figure output (linked by its mark), each with its plotted arrays and its readability;
    on a chapter every PNG is a recorded figure (a result page also shows a chapter's PNG as an image)."""
    problems, shown = [], 0
    for document in book.notebook_documents(ROOT):
        records = _page_data(smoke_site, document)["figures"]
        marked, unmarked = _marked_outputs(document)
        shown += len(records)
        placed = {r["position"]: (r["cell"], r["output"]) for r in records}
        if placed != marked:
            problems.append(f"{document}: records at {placed}, figure outputs at {marked}")
        if unmarked and not book.is_result_page(document, ROOT):
            problems.append(f"{document}: PNG outputs without a figure record at (cell, output) {unmarked}")
        for r in records:
            where = f"{document} figure {r['position']} (cell {r['cell']})"
            if "error" in r:
                problems.append(f"{where}: not recorded: {r['error']}")
            elif not figures.has_plotted_data(r):
                problems.append(f"{where}: no plotted values in its record: {json.dumps(r)[:300]}")
            elif r["chapter"] != Path(document).name or r["smallest_font"] is None:
                problems.append(f"{where}: chapter {r['chapter']!r}, smallest font {r['smallest_font']}")
    assert shown > 10, f"only {shown} figure records in the whole book"
    assert not problems, "\n".join(problems)


def _small_text_line(record: dict) -> str:
    smallest = record["smallest_font"]
    return (f"{record['document']} figure {record['position']} (cell {record['cell']}"
            f"{', main' if record['main'] else ''}): {smallest['size']:.1f} pt {smallest['text']!r} "
            f"({smallest['where']}, drawn {smallest['drawn']:g} pt, figure {record['shown_width_px']:.0f} px wide); "
            f"{len(record['small_texts'])} texts below {plots.MIN_FONT} pt")


def test_every_figure_is_readable_and_every_chapter_tags_its_main_figure(smoke_site, capsys):
    """Every figure of every page (the chapters' main figures first of all) shows all its text at
    >= ``plots.MIN_FONT`` pt at 100% zoom, and every chapter with figures tags its main one (``main-figure``,
    the figure the landing page and ``book.main_figure_output`` take)."""
    records, untagged = [], []
    for document in book.notebook_documents(ROOT):
        page = [r for r in _page_data(smoke_site, document)["figures"] if r.get("smallest_font")]
        records += page
        if page and not book.is_result_page(document, ROOT) and not any("main-figure" in r["tags"] for r in page):
            untagged.append(document)
    small = [r for r in records if r["small_texts"]]
    with capsys.disabled():
        print(f"\nSmallest text of the {len(records)} figures at 100% zoom: "
              f"{min(r['smallest_font']['size'] for r in records):.1f} pt")
    assert records and all(r["smallest_font"]["size"] > 0 for r in records)
    assert not small, f"figures with text below {plots.MIN_FONT} pt:\n" + "\n".join(map(_small_text_line, small))
    assert not untagged, f"chapters with figures but no cell tagged main-figure: {untagged}"
    for document in {r["document"] for r in records if "main-figure" in r["tags"]}:
        main = [r for r in records if r["document"] == document and r["main"]]
        assert len(main) == 1 and "main-figure" in main[0]["tags"], (document, main)


COLUMN_STATE = r"""
    const article = document.querySelector('article.bd-article');
    const style = getComputedStyle(article);
    return article.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);"""


def test_the_text_column_is_as_wide_as_plots_assumes(visits, driver):
    driver.get(visits["chapters/memorization"].url)
    _wait(driver, "return document.readyState === 'complete'")
    assert driver.execute_script("return window.innerWidth") == WINDOW[0]
    assert driver.execute_script(COLUMN_STATE) == pytest.approx(figures.COLUMN_PX, abs=1)


SHOW_PNG = r"""
    const [data, width, height, done] = arguments;
    const figure = document.querySelector('article .cell_output img');
    const image = figure.cloneNode();
    image.id = 'bnlib-probe';
    image.style.width = width + 'px';
    image.style.height = height + 'px';  // as myst-nb writes a figure's size
    image.onload = () => done(image.getBoundingClientRect().width);
    image.src = 'data:image/png;base64,' + data;
    figure.parentNode.insertBefore(image, figure);
    image.scrollIntoView();"""


def test_display_scale_matches_the_browser(visits, driver):
    """A figure W inches wide with a black bar 36 pt tall, as a kernel shows it (2x PNG, its CSS size in its
    style), put into a chapter page's figure output: the bar's height on screen in CSS pt is what
    ``figures.display_scale`` predicts for a 36 pt text, at the column's width and wider."""
    import base64
    import io

    import matplotlib.pyplot as plt  # the Agg backend (conftest.py)
    import numpy as np
    from matplotlib.patches import Rectangle
    from PIL import Image
    from selenium.webdriver.common.by import By

    for width in (5.0, 13.0):
        fig = plt.figure(figsize=(width, 2.0), dpi=plots.DPI)
        bar = 36 / 72  # inches
        fig.patches.append(Rectangle((0.5, 0.5), 1.0, bar, transform=fig.dpi_scale_trans, color="black", linewidth=0))
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=2 * plots.DPI)  # retina, no tight box: exactly W x 2 in
        plt.close(fig)
        pixels = Image.open(io.BytesIO(buffer.getvalue())).size
        driver.get(visits["chapters/memorization"].url)
        _wait(driver, "return document.readyState === 'complete'")
        shown = driver.execute_async_script(SHOW_PNG, base64.b64encode(buffer.getvalue()).decode(),
                                            pixels[0] // 2, pixels[1] // 2)
        assert shown == pytest.approx(min(figures.COLUMN_PX, width * plots.DPI), abs=1)
        screenshot = Image.open(io.BytesIO(driver.find_element(By.ID, "bnlib-probe").screenshot_as_png)).convert("L")
        column = np.asarray(screenshot)[:, int(1.0 * plots.DPI * shown / (width * plots.DPI))]  # through the bar
        dark = np.flatnonzero(column < 128)
        measured = (dark.max() - dark.min() + 1) * 72 / 96  # CSS px to CSS pt (the screen is 1 device px a CSS px)
        assert measured == pytest.approx(36 * figures.display_scale(width), abs=1.0), (width, measured)


# ----------------------------------------------------------------------------- the live notebooks (make lab)

def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """JupyterLab (``requirements-lab.txt``; ``make test`` and ``make lab`` install it) serving a copy of the
    chapters (bnlib imported from the repository) on 127.0.0.1 with a random token and the app exposed to
    the page's JavaScript; shut down afterwards. Yields (base URL, token)."""
    import importlib.util
    import secrets
    import subprocess
    import sys
    import urllib.request

    if importlib.util.find_spec("jupyterlab") is None:
        message = "JupyterLab is not installed: `make test` installs it (pip install -r requirements-lab.txt)."
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    home = tmp_path_factory.mktemp("jupyterlab")
    # JupyterLab saves the notebooks it runs (autosave): it serves a copy of the chapters, never the repository
    shutil.copytree(ROOT / "chapters", home / "book" / "chapters")
    port, token = _free_port(), secrets.token_hex(16)
    environment = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "run"),
                   "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
                   "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    environment.pop("MPLBACKEND", None)  # the kernel as a reader gets it
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={home / 'book'}", "--expose-app-in-browser",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if os.geteuid() == 0 else [])],  # CI and `make test` run as root
        env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{base}api/status?token={token}", timeout=5)
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield base, token
    server.terminate()  # the server shuts its kernels down on SIGTERM
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(10)
    log.close()


RUN_UP_TO = r"""
    const [marker, done] = [arguments[0], arguments[arguments.length - 1]];
    const panel = window.jupyterapp.shell.currentWidget;
    const index = panel.content.widgets.findIndex(c => c.model.type === 'code'
        && c.model.sharedModel.getSource().includes(marker));
    if (index < 0) { done('no cell contains ' + marker); return; }
    panel.content.activeCellIndex = index;
    window.jupyterapp.commands.execute('notebook:run-all-above')
      .then(() => {
        panel.content.activeCellIndex = index;
        return window.jupyterapp.commands.execute('notebook:run-cell');
      })
      .then(() => done('ok'), error => done(String(error)));"""

KERNEL_READY = r"""
    const app = window.jupyterapp;
    const panel = app && app.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
    return Boolean(kernel && kernel.status === 'idle' && panel.content.widgets.length > 0);"""

LIVE_STATE = r"""(function (label) {
    const slider = Array.from(document.querySelectorAll('.widget-hslider')).find(
        s => s.querySelector('.widget-label') && s.querySelector('.widget-label').innerText.trim() === label);
    const image = document.querySelector('.jp-OutputArea img.widget-image, .jp-OutputArea .widget-image img');
    return slider && image ? {readout: slider.querySelector('.widget-readout').innerText.trim(), src: image.src,
                              loaded: image.complete && image.naturalWidth > 0} : null;
})"""


def test_live_theory_slider_redraws_the_figure_in_jupyterlab(jupyterlab, driver):
    """The path ``make lab`` gives a reader: the theory chapter in JupyterLab with the project's kernel, its
    slider cell run, the batch-size slider dragged: the figure must change."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    base, token = jupyterlab
    driver.set_script_timeout(600)
    driver.get(f"{base}lab/tree/chapters/theory.ipynb?token={token}")
    _wait(driver, KERNEL_READY, timeout=120)
    outcome = driver.execute_async_script(RUN_UP_TO, "widgets.IntSlider(")
    assert outcome == "ok", outcome
    _wait(driver, f"const s = {LIVE_STATE}('m'); return s && s.loaded;", timeout=120)
    before = driver.execute_script(f"return {LIVE_STATE}('m');")
    handle = next(s for s in driver.find_elements(By.CSS_SELECTOR, ".widget-hslider")
                  if s.find_element(By.CSS_SELECTOR, ".widget-label").text.strip() == "m"
                  ).find_element(By.CSS_SELECTOR, ".noUi-handle")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", handle)
    ActionChains(driver).click_and_hold(handle).move_by_offset(60, 0).release().perform()
    changed = f"const s = {LIVE_STATE}('m'); return s && s.loaded && s.src !== {json.dumps(before['src'])};"
    _wait(driver, changed, timeout=60)
    after = driver.execute_script(f"return {LIVE_STATE}('m');")
    screenshots = Path(os.environ["BNLIB_BUILD"]) / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(screenshots / "jupyterlab_theory_slider.png"))
    assert int(after["readout"]) > int(before["readout"]), (before["readout"], after["readout"])
