"""The rendered leaderboard page in headless Chromium: rows, SVG plots, sorting, no injected script.

Needs the Debian ``chromium`` package (``/usr/bin/chromium``; ``CLBENCH_CHROMIUM`` overrides the
path); skipped when it is absent. The page is loaded from ``file://`` with networking features off.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_leaderboard import HOSTILE, VERSIONS, FixtureSpaces, make_protocol_dir

from clbench import leaderboard as lb

CHROMIUM = os.environ.get("CLBENCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.integration,  # runs Chromium processes: `make test-integration`
              pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                 reason=f"headless Chromium not found at {CHROMIUM} "
                                        "(apt-get install chromium, or set CLBENCH_CHROMIUM)")]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=2000"]


@pytest.fixture()
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """index.html of a board with three valid entries (one named with markup) and one rejected."""
    monkeypatch.setattr(lb.validate, "registered_scenario_versions", lambda: dict(VERSIONS))
    monkeypatch.setattr(lb.provenance, "registered_search_spaces", FixtureSpaces)
    boards = tmp_path / "boards"
    for method, skill in (("alpha_method", 0.7), ("beta_method", 0.95), (HOSTILE, 0.8)):
        lb.submit(make_protocol_dir(tmp_path, method, skill=skill, general=True), boards)
    (boards / "vision" / "rejected_method.json").write_text("{broken")
    lb.render(boards)
    return boards / "vision" / "index.html"


def chromium(tmp_path: Path, *args: str) -> str:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _row_methods(dom: str) -> list[str]:
    return re.findall(r'<tr data-method="([^"]*)"', dom)


def _check_not_injected(dom: str) -> None:
    assert "<title>clbench leaderboard: vision</title>" in dom
    assert "data-pwned" not in dom and "PWNED</title>" not in dom
    assert "&lt;script&gt;document.title=" in dom  # shown as text, not run


def test_page_has_rows_and_plots_and_sorts_from_the_url_hash(page: Path, tmp_path: Path) -> None:
    dom = chromium(tmp_path, "--dump-dom", page.as_uri() + "#sort=acc:asc")
    assert 'data-js="ready"' in dom and 'data-sorted="acc:asc"' in dom  # the page's script ran
    methods = _row_methods(dom)
    assert len(methods) == 3 and methods[0] == "alpha_method" and methods[2] == "beta_method"
    assert 'id="plot-scatter"' in dom and 'id="plot-pareto"' in dom
    assert dom.count('class="point"') == 6  # 3 methods on ACC-vs-forgetting and on the Pareto plot
    assert dom.count('class="heatmap"') == 3 and 'id="plot-retention"' in dom
    assert "rejected_method.json" in dom and "rejected_method" not in "".join(methods)
    _check_not_injected(dom)


def test_clicking_a_header_sorts_the_table(page: Path, tmp_path: Path) -> None:
    # a test copy without the CSP, so that an appended script may click; escaping alone must hold
    html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page.read_text())
    clicks = ("<script>var b = document.querySelector('th[data-key=forgetting] button');"
              "b.click(); document.body.setAttribute('data-first', document.body.getAttribute('data-sorted'));"
              "b.click();</script></body>")
    copy = page.with_name("clicked.html")
    copy.write_text(html.replace("</body>", clicks))
    dom = chromium(tmp_path, "--dump-dom", copy.as_uri())
    assert 'data-first="forgetting:desc"' in dom and 'data-sorted="forgetting:asc"' in dom
    assert 'aria-sort="ascending"' in dom
    methods = _row_methods(dom)
    assert methods[0] == "alpha_method" and methods[2] == "beta_method"  # least forgetting first
    _check_not_injected(dom)


def test_screenshot_is_not_blank(page: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "page.png"
    chromium(tmp_path, "--window-size=1100,1400", f"--screenshot={shot}", page.as_uri())
    with Image.open(shot) as im:
        gray = im.convert("L")
        dark = sum(gray.histogram()[:128])
        colors = len(set(im.convert("RGB").getdata()))
    assert gray.size == (1100, 1400)
    assert dark > 5000 and colors > 20  # text, table lines and coloured plots, not an empty page
