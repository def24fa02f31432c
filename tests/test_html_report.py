"""``--html``: each command's page opens in a real headless Chromium, offline, with no console error and every plot
drawn. Skipped, with the reason, where no chromium (Debian's package, installed by .ci/run) or playwright exists;
playwright drives the system browser and never downloads one.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.mutation import runner as mutate
from harness.mutation.catalogue import swap_layers
from harness.parity.check import check_family
from harness.parity.html_report import check_page, render, verify_page, write_html
from harness.parity.parity import cuda_skip_reason
from harness.parity.points import unsupported
from harness.registry import family
from harness.terminal import colour

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
SCREEN = 900  # px: the check page's overview must fit above this


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A fresh Chromium profile driven by playwright; the browser is the system's, never a downloaded one."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path_factory.mktemp("profile")), headless=True,
                                                       executable_path=CHROMIUM, args=FLAGS, offline=True,
                                                       viewport={"width": 1280, "height": SCREEN})
        yield context
        context.close()


def open_page(browser: Any, path: Path) -> dict[str, Any]:
    """Load ``path``; what the page shows and every console error, failed request or network request it made.

    The check page folds its plots by family: which folds were open on load is recorded, then every fold is opened
    so that every plot can be seen drawn."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda req: None if req.url.startswith(("file:", "data:")) else errors.append(req.url))
    page.goto(path.as_uri(), wait_until="load")
    seen = page.evaluate("""() => {
        const text = sel => document.querySelector(sel)?.textContent.trim() ?? '';
        const overview = document.querySelector('#overview');
        const figure = document.querySelector('figure.plot');
        const dash = sel => {
            const el = document.querySelector(sel);
            return el ? getComputedStyle(el).strokeDasharray : null;
        };
        return {
            verdict: text('#verdict'),
            diagnosis: text('#diagnosis'),
            cards: [...document.querySelectorAll('figure.plot ul.diagnosis')].map(ul => ul.textContent),
            headings: [...document.querySelectorAll('h2')].map(h => h.textContent.trim()),
            overview_first: !!overview && !!figure
                && !!(overview.compareDocumentPosition(figure) & Node.DOCUMENT_POSITION_FOLLOWING),
            overview_bottom: overview ? overview.getBoundingClientRect().bottom : null,
            grid: [...document.querySelectorAll('#overview td.cell')].map(td => td.className),
            skipped: [...document.querySelectorAll('#overview p.skipped')].map(p => p.textContent),
            folds: [...document.querySelectorAll('details.family')].map(d => [d.id, d.open]),
            dashes: {guide: dash('figure.plot svg .guide.line'), bound: dash('figure.plot svg .serie-1 path.line'),
                     noise: dash('figure.plot svg .serie-2 path.line')},
            rows: document.querySelectorAll('#matrix tbody tr').length,
            linked: document.querySelectorAll('#matrix a[href^="#plot-"]').length,
            command: document.querySelector('#environment code')?.textContent ?? '',
        };
    }""")
    seen |= page.evaluate("""() => {
        document.querySelectorAll('details').forEach(d => { d.open = true; });
        return {
            figures: document.querySelectorAll('figure.plot').length,
            plots: [...document.querySelectorAll('figure.plot svg')].map(svg => {
                const box = svg.getBoundingClientRect();
                const lines = [...svg.querySelectorAll('path.line')]
                    .filter(p => (p.getAttribute('d') || '').length > 10);
                return {width: box.width, height: box.height, lines: lines.length, visible: svg.checkVisibility()};
            }),
        };
    }""")
    page.close()
    return {**seen, "errors": errors}


def assert_renders(seen: dict[str, Any], plots: int, verdict: str) -> None:
    assert seen["errors"] == []
    assert seen["verdict"].startswith(verdict) and seen["command"].startswith("convparity")
    assert seen["figures"] == len(seen["plots"]) == plots > 0
    for plot in seen["plots"]:
        assert plot["visible"] and plot["width"] > 100 and plot["height"] > 100
        assert plot["lines"] >= 2  # error and bound at least
    # grid lines solid (pygal dashes them, which reads as more bounds); the bound dashed, the noise dotted
    assert seen["dashes"]["guide"] == "none" and seen["dashes"]["bound"] == "7px, 4px"
    assert seen["dashes"]["noise"] in (None, "2px, 3px")


def test_check_html_opens_with_the_overview_and_renders_every_plot(browser: Any, tmp_path: Path) -> None:
    out = tmp_path / "check.html"
    assert main(["check", "phi", "--dtypes", "float32,bfloat16", "--devices", "cpu,cuda", "--html", str(out)]) == 0
    text = out.read_text()
    assert "<script" not in text and "<link" not in text and "@import" not in text  # nothing to fetch or run
    seen = open_page(browser, out)
    ran = 2 if cuda_skip_reason() is None else 1  # devices
    assert_renders(seen, plots=ran * 2 * len(family("phi").cases), verdict="PASS")
    assert seen["headings"][0] == "Overview" and seen["overview_first"]
    assert seen["overview_bottom"] <= SCREEN
    assert len(seen["grid"]) == ran * 2 * len(family("phi").cases) and "cell skip" not in seen["grid"]
    if ran == 1:
        assert seen["skipped"] == [f"cuda: skipped in every cell: {cuda_skip_reason()}"]
    assert seen["folds"] == [["family-phi", False]]  # nothing failed: folded
    assert seen["rows"] == seen["linked"] == ran * 2 * len(family("phi").cases)


def test_a_failed_case_shows_its_diagnosis_in_an_open_fold_first(browser: Any, tmp_path: Path) -> None:
    results = check_family(family("mixtral"), ["cpu"], ["float32"], cases=["gqa"])
    failed = results[0]
    failed.violations, failed.first_divergent_layer = ["max_abs 0.31 > 0.0001"], 2
    failed.diagnosis = "layers.1.attention disagrees (planted for the test)"
    passing = replace(results[0], family="another", violations=[], diagnosis=None)
    out = tmp_path / "failed.html"
    write_html(check_page([passing, failed]), out)
    assert "first divergent hidden state: output of layers.1" in out.read_text()
    seen = open_page(browser, out)
    assert_renders(seen, plots=2, verdict="FAIL")
    assert seen["folds"] == [["family-mixtral", True], ["family-another", False]]
    assert "diagnosis: layers.1.attention disagrees (planted for the test)" in seen["cards"][0]
    assert seen["grid"][1] == "cell fail"  # the overview's rows keep the run's order


def test_verify_html_renders(browser: Any, tmp_path: Path, convparity_round_trip: Callable) -> None:
    rt = convparity_round_trip("mixtral", "gqa")
    out = tmp_path / "verify.html"
    assert main(["verify", "mixtral", str(rt.model_dir.parent / "source"), str(rt.model_dir), "--quiet",
                 "--seq-len", "8", "--html", str(out)]) == 0
    seen = open_page(browser, out)
    assert_renders(seen, plots=1, verdict="PASS")
    assert seen["diagnosis"] == ""


def test_verify_html_of_a_failing_conversion_shows_the_diagnosis(browser: Any, tmp_path: Path,
                                                                 convparity_round_trip: Callable) -> None:
    rt = convparity_round_trip("mixtral", "gqa")
    broken = tmp_path / "hf"
    shutil.copytree(rt.model_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(config | {"rms_norm_eps": 1e-2}))  # upstream: 1e-5
    out, record = tmp_path / "verify.html", tmp_path / "verify.json"
    assert main(["verify", "mixtral", str(rt.model_dir.parent / "source"), str(broken), "--quiet", "--batch", "1",
                 "--seq-len", "8", "--html", str(out), "--json", str(record)]) == 1
    diagnosis = json.loads(record.read_text())["results"][0]["diagnosis"]
    if unsupported() is None:  # transformers 4.x: the diagnosis is the line saying it cannot run, shown the same
        assert "model.layers.0.input_layernorm" in diagnosis
        assert "fed by model.layers.0.input_layernorm.weight" in diagnosis
    seen = open_page(browser, out)
    assert_renders(seen, plots=1, verdict="FAIL")
    assert seen["diagnosis"] == f"diagnosis: {diagnosis}"  # under the banner
    assert f"diagnosis: {diagnosis}" in seen["cards"][0]  # and in the failing case's card


def test_mutate_html_renders(browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mutate, "mutants_for", lambda fam: [swap_layers])
    monkeypatch.setattr(mutate, "cases_for", lambda fam: {"gqa": fam.cases["gqa"]})
    out = tmp_path / "mutate.html"
    assert mutate.run_mutate([family("mixtral")], ["float32"], None, html=out, quiet=True) == 0
    seen = open_page(browser, out)
    assert_renders(seen, plots=2, verdict="PASS")  # the killed mutant and the clean control


def test_verify_page_renders_whatever_fields_the_result_has() -> None:
    assert "<h1>convparity verify: </h1>" in render(verify_page({}))  # nothing known: still a page
    page = verify_page({"family": "phi", "verdict": "INCONCLUSIVE", "passed": False, "kl": 1e-6, "kl_p95": 9e-6,
                        "power": {"applicable": 2, "survivors": ["wrong_gelu"], "mutants": [
                            {"mutant": "wrong_gelu", "killed": False, "margin": 0.4},
                            {"mutant": "swap_layers", "killed": True, "margin": 80.0}]},
                        "routing": [{"name": "model.layers.0.mlp.gate", "tokens": 64, "agree": 63, "near_ties": 1}],
                        "logits": {"name": "logits", "max_abs": 0.0, "scale": 2.0, "bound": 1e-6, "passed": True,
                                   "cast": 3e-4}})
    html = render(page)
    assert 'class="verdict inconclusive"' in html and "INCONCLUSIVE" in html
    assert "KL 1.0e-06, KL p95 9.0e-06" in page.headline
    assert page.details == {
        "power": {"applicable": "2", "survivors": "wrong_gelu", "mutants: wrong_gelu": "killed False; margin 0.4",
                  "mutants: swap_layers": "killed True; margin 80"},
        "routing": {"model.layers.0.mlp.gate": "tokens 64; agree 63; near_ties 1"}}
    assert page.columns[-1] == "cast" and page.rows[0].cells[-1] == "3.0e-04"
    assert page.rows[0].cells[6] == "exact" and page.rows[0].status == "pass"
    assert page.plots[0].label == "INCONCLUSIVE" and page.plots[0].passed  # nothing beyond its bound


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
