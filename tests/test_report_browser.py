"""`lmtailor run` ends with report.html; headless Chromium opens it with no console errors, and every table and
chart has rendered (a screenshot is taken). Needs Debian's Chromium: CI installs it (.ci/run); elsewhere the test is
skipped, unless CI=true, where a missing browser is a failure, not a skip."""

import json
import os
import random
import shutil
import textwrap

import pytest

from lmtailor.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHARTS = ("pareto", "learning_curves", "memory", "forgetting", "break_even")


def _browser_or_skip():
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no chromium on PATH: .ci/run installs Debian's chromium")
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    rng, labels = random.Random(0), ["red", "green", "blue"]
    words = "the a of one two river stone cloud quiet bright small old".split()
    with (tmp / "rows.jsonl").open("w") as f:
        for i in range(90):
            text = " ".join(rng.choices(words, k=6)) + f" {labels[i % 3]} " + " ".join(rng.choices(words, k=3))
            f.write(json.dumps({"text": text, "colour": labels[i % 3]}) + "\n")
    (tmp / "exp.yaml").write_text(textwrap.dedent("""
        name: report
        task:
          type: classification
          instruction: Which colour word does the text contain?
        data: {source: rows.jsonl, input_field: text, target_field: colour, max_test: 12}
        models: [tiny-llama]
        strategies:
          - {name: prompt, shots: 0}
          - {name: finetune, method: lora, max_steps: 2, batch_size: 4, train_sizes: [12, 24]}
        budget: {max_input_tokens: 48, max_seq_len: 96}
        runtime: {precision: fp32}
    """))
    assert main(["run", str(tmp / "exp.yaml"), "--out", str(tmp / "runs")]) == 0
    (run,) = (tmp / "runs").iterdir()
    return run


def test_the_run_writes_the_report_and_prints_its_path(run_dir, capsys):
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()
    assert main(["report", str(run_dir)]) == 0
    assert f"report: {run_dir / 'report.html'}" in " ".join(capsys.readouterr().out.split())


def test_the_report_renders_in_headless_chromium_with_every_table_and_chart(run_dir, tmp_path):
    playwright = _browser_or_skip()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            problems = []
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: problems.append(f"network request {r.url}")
                    if not r.url.startswith("file://") else None)
            page.goto((run_dir / "report.html").resolve().as_uri())
            page.wait_for_load_state("load")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000  # a real picture of the page, not a blank one
            for section in ("#recommendation", "#cost-benefit table", "#detail table", "#honesty"):
                box = page.locator(section).first.bounding_box()
                assert box and box["width"] > 100 and box["height"] > 20, section
            rows = page.locator("#cost-benefit table tbody tr").count()
            assert rows >= 2  # the prompt rung and the finetune rung
            for key in CHARTS:
                svg = page.locator(f"#chart-{key} svg")
                assert svg.count() == 1, f"chart {key} missing"
                box = svg.bounding_box()
                assert box and box["width"] > 200 and box["height"] > 150, key
                assert page.locator(f"#chart-{key} svg path").count() > 3, f"chart {key} drew nothing"
        finally:
            browser.close()
    assert problems == []
