"""``--html``: each command's page opens in a real headless Chromium, offline, with no console error and every plot
drawn. Skipped, with the reason, where no chromium (Debian's package, installed by .ci/run) or playwright exists;
playwright drives the system browser and never downloads one.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.mutation import runner as mutate
from harness.mutation.catalogue import swap_layers
from harness.parity.check import check_family
from harness.parity.html_report import check_page, write_html
from harness.registry import family
from harness.terminal import colour

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A fresh Chromium profile driven by playwright; the browser is the system's, never a downloaded one."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path_factory.mktemp("profile")), headless=True,
                                                       executable_path=CHROMIUM, args=FLAGS, offline=True)
        yield context
        context.close()


def open_page(browser: Any, path: Path) -> dict[str, Any]:
    """Load ``path``; what the page shows and every console error, failed request or network request it made."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda req: None if req.url.startswith(("file:", "data:")) else errors.append(req.url))
    page.goto(path.as_uri(), wait_until="load")
    seen = page.evaluate("""() => ({
        verdict: document.querySelector('#verdict')?.textContent.trim() ?? '',
        rows: document.querySelectorAll('#matrix tbody tr').length,
        linked: document.querySelectorAll('#matrix a[href^="#plot-"]').length,
        figures: document.querySelectorAll('figure.plot').length,
        plots: [...document.querySelectorAll('figure.plot svg')].map(svg => {
            const box = svg.getBoundingClientRect();
            const lines = [...svg.querySelectorAll('path.line')].filter(p => (p.getAttribute('d') || '').length > 10);
            return {width: box.width, height: box.height, lines: lines.length};
        }),
        command: document.querySelector('#environment code')?.textContent ?? '',
    })""")
    page.close()
    return {**seen, "errors": errors}


def assert_renders(seen: dict[str, Any], plots: int, verdict: str) -> None:
    assert seen["errors"] == []
    assert seen["verdict"].startswith(verdict) and seen["command"].startswith("convparity")
    assert seen["figures"] == len(seen["plots"]) == plots > 0
    for plot in seen["plots"]:
        assert plot["width"] > 100 and plot["height"] > 100 and plot["lines"] >= 2  # error and bound at least


def test_check_html_renders_every_plot(browser: Any, tmp_path: Path) -> None:
    out = tmp_path / "check.html"
    assert main(["check", "phi", "--dtypes", "float32,bfloat16", "--devices", "cpu", "--html", str(out)]) == 0
    text = out.read_text()
    assert "<script src" not in text and "<link" not in text and "@import" not in text  # nothing to fetch
    seen = open_page(browser, out)
    assert_renders(seen, plots=2 * len(family("phi").cases), verdict="PASS")
    assert seen["rows"] == seen["linked"]


def test_a_failed_case_shows_its_diagnosis(browser: Any, tmp_path: Path) -> None:
    results = check_family(family("mixtral"), ["cpu"], ["float32"], cases=["gqa"])
    failed = results[0]
    failed.violations, failed.first_divergent_layer = ["max_abs 0.31 > 0.0001"], 2
    out = tmp_path / "failed.html"
    write_html(check_page(results), out)
    assert "first divergent hidden state: output of layers.1" in out.read_text()
    assert_renders(open_page(browser, out), plots=1, verdict="FAIL")


def test_verify_html_renders(browser: Any, tmp_path: Path, convparity_round_trip: Callable) -> None:
    rt = convparity_round_trip("mixtral", "gqa")
    out = tmp_path / "verify.html"
    assert main(["verify", "mixtral", str(rt.model_dir.parent / "source"), str(rt.model_dir), "--quiet",
                 "--seq-len", "8", "--html", str(out)]) == 0
    assert_renders(open_page(browser, out), plots=1, verdict="PASS")


def test_mutate_html_renders(browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mutate, "mutants_for", lambda fam: [swap_layers])
    monkeypatch.setattr(mutate, "cases_for", lambda fam: {"gqa": fam.cases["gqa"]})
    out = tmp_path / "mutate.html"
    assert mutate.run_mutate([family("mixtral")], ["float32"], None, html=out, quiet=True) == 0
    seen = open_page(browser, out)
    assert_renders(seen, plots=2, verdict="PASS")  # the killed mutant and the clean control


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert colour(Terminal()) and not colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not colour(Terminal())


def test_check_json_follows_the_shared_schema(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    assert main(["check", "rwkv", "--dtypes", "float32", "--devices", "cpu", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    assert list(document)[:3] == ["schema", "command", "environment"] and document["schema"] == "convparity/1"
    assert document["command"] == "check" and document["summary"]["failed"] == 0
    assert document["results"] and all(r["per_layer"][-1]["name"] == "logits" for r in document["results"])
