"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright, against a
gateway process and two service processes found over mDNS. It sees the example services, calls
an endpoint through the form, sees its own subscription among the topics, watches a node's state
change live when its process is killed, and saves a screenshot (docs/img/dashboard.png is one)."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _start(home: Path, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "trimicro.cluster.cli", "--home", str(home), *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _line(proc: subprocess.Popen[str], pattern: str, timeout: float = 60.0) -> re.Match[str]:
    """The first stdout line of ``proc`` matching ``pattern``, within ``timeout`` seconds."""
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            if found := re.search(pattern, line):
                return found
    raise AssertionError(f"no line matching {pattern!r} from {proc.args}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, subprocess.Popen[str]]]]:
    procs = {
        name: _start(tmp_path, "run", "examples/services.py", "--name", name) for name in ("svc-a", "svc-b")
    }
    try:
        for proc in procs.values():
            _line(proc, r"^node \S+ at ")
        gateway = procs["gateway"] = _start(tmp_path, "api", "--address", "127.0.0.1:0")
        url = _line(gateway, r"^gateway \S+ at (http://\S+) ").group(1)
        yield url, procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.timeout(240)
def test_dashboard_in_chromium(cluster: tuple[str, dict[str, subprocess.Popen[str]]]) -> None:
    url, procs = cluster
    assert os.path.exists(CHROMIUM), "install Debian's chromium (apt-get install -y chromium)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{url}/dashboard")
        expect(page.locator("#conn")).to_have_text("live", timeout=30_000)
        expect(page.locator("#services")).to_contain_text("greeter", timeout=60_000)
        expect(page.locator("#services")).to_contain_text("counter")
        for node in ("svc-a", "svc-b"):
            expect(page.locator(f'#members tr[data-node="{node}"]')).to_contain_text("alive", timeout=60_000)

        page.select_option("#endpoint", "greeter/Greeter.hello")
        page.fill("#body", '{"name": "Ada"}')
        page.click("#send")
        expect(page.locator("#reply")).to_contain_text("Hello, Ada!", timeout=30_000)
        page.fill("#body", '{"name": ""}')
        page.click("#send")
        expect(page.locator("#reply")).to_contain_text("400", timeout=30_000)
        expect(page.locator("#errors")).to_contain_text("name must not be empty", timeout=30_000)

        # A subscription from the page (SSE, in queue group "audit") is a topic on the gateway's node.
        page.evaluate("window.sub = new EventSource('/api/subscribe/orders.>?queue=audit')")
        topic = page.locator("#topics")
        expect(topic).to_contain_text("orders.>", timeout=30_000)
        expect(topic).to_contain_text("audit")

        procs["svc-b"].kill()  # no goodbye: the membership must notice on its own
        row = page.locator('#members tr[data-node="svc-b"]')
        expect(row).to_contain_text(re.compile("suspect|dead"), timeout=90_000)
        shot = Path(os.environ.get("TRIMICRO_SCREENSHOT", ROOT / "build" / "dashboard.png"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
