"""The operator console in a real browser (issue 20): Playwright driving Debian's chromium against a
real ``hl7gw run``. Sign in, see the sender on the dashboard once messages arrive, find a message
by control id and by MRN, open a dead letter, edit and replay it, watch a replay job finish, find
the resulting Patient; a reader cannot sign in; a forged form without the CSRF token is refused;
a ``<script>`` in PID-5 renders as text. Each page is saved as a screenshot under the test's
temporary directory (``screenshots/``), so a failure can be looked at."""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway_process import GatewayProcess
from tests.support.mllp import send_raw

pytestmark = pytest.mark.slow
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "no chromium on PATH: install Debian's package (apt-get install chromium; .ci/run does)",
        allow_module_level=True,
    )

TOKENS = "ro:reader-token-1:reader,ana:operator-token-1:operator,bo:admin-token-1:admin"
MSH = "MSH|^~\\&|LAB|EAST|GW|GW|20240501120000||ADT^A08^ADT_A01|{control}|P|2.5.1\r"
GOOD = MSH + "PID|1||{mrn}^^^HOSP^MR||{family}^Jane\r"
#: Accepted at intake, but with no patient identifier it cannot be converted: a dead letter.
BROKEN = MSH + "PID|1||||Broken^Jane\r"
SCRIPT = "<script>alert(1)</script>"
TIMEOUT_MS = 30_000


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    external = os.environ.get("HL7GW_REDIS_URL")
    namespace = f"hl7gw-console-{uuid.uuid4().hex[:8]}" if external else None
    process = GatewayProcess(tmp_path / "data", redis_url=external, namespace=namespace)
    process.env["HL7GW_API_TOKENS"] = TOKENS
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            launched.close()


class Shots:
    """Numbered full-page screenshots under the test's temporary directory."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.count = 0
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, page: Any, name: str) -> None:
        self.count += 1
        page.screenshot(path=str(self.folder / f"{self.count:02d}-{name}.png"), full_page=True)


def _send(gateway: GatewayProcess, text: str) -> None:
    ack = send_raw(text.encode(), gateway.mllp_port)
    assert str(ack.segment("MSA")[1]) == "AA"


def _sign_in(page: Any, gateway: GatewayProcess, token: str) -> None:
    page.goto(f"{gateway.base_url}/console")
    assert page.url.endswith("/console/login")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def _go(page: Any, name: str) -> None:
    """Follow the navigation bar's link ``name``."""
    page.locator("header nav").get_by_role("link", name=name, exact=True).click()


def _search(page: Any, field: str, value: str, count: int = 1) -> None:
    """Search the message browser until ``count`` messages are found (the pipeline may still be at work)."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        _go(page, "Messages")
        page.get_by_label(field).fill(value)
        page.get_by_role("button", name="Search").click()
        found = page.locator("#found tbody tr")
        if found.count() == count or time.monotonic() > deadline:
            break
        page.wait_for_timeout(300)
    playwright.expect(found).to_have_count(count)


def test_an_operator_finds_fixes_and_replays_in_the_browser(
    gateway: GatewayProcess, browser: Any, tmp_path: Path
) -> None:
    shot = Shots(tmp_path / "screenshots")
    expect = playwright.expect
    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1366, "height": 800})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    csp_violations: list[str] = []
    page.on("console", lambda msg: csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None)

    # Sign in; the dashboard shows the sender once its messages arrive (it refreshes itself).
    page.goto(f"{gateway.base_url}/console")
    shot(page, "sign-in")
    _sign_in(page, gateway, "operator-token-1")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    _send(gateway, GOOD.format(control="E2E-1", mrn="E2E-MRN-1", family="Good"))
    _send(gateway, BROKEN.format(control="E2E-BAD-1"))
    _send(gateway, BROKEN.format(control="E2E-BAD-2"))
    _send(gateway, GOOD.format(control="E2E-XSS-1", mrn="E2E-MRN-2", family=SCRIPT))
    sender = page.locator("#senders tr", has_text="LAB|EAST")
    expect(sender).to_be_visible()
    expect(sender.locator("a.bad")).to_have_text("2")  # both broken messages are open dead letters
    shot(page, "dashboard")

    # Find a message by its control id, read it laid out by segment and field.
    _search(page, "Control id (MSH-10)", "E2E-1")
    shot(page, "messages-by-control-id")
    page.locator("#found").get_by_role("link", name="Open").click()
    expect(page.get_by_text("PID-5.1 Family Name")).to_be_visible()
    expect(page.locator("#resources")).to_contain_text("Patient/")
    shot(page, "message")

    # ... and by the patient's MRN, through the store.
    _search(page, "Patient identifier (MRN)", "E2E-MRN-1")
    expect(page.locator("#found")).to_contain_text("E2E-1")
    shot(page, "messages-by-mrn")

    # The <script> in PID-5 is text on the page, never run.
    _search(page, "Control id (MSH-10)", "E2E-XSS-1")
    page.locator("#found").get_by_role("link", name="Open").click()
    expect(page.locator("table.layout")).to_contain_text(SCRIPT)
    assert page.locator("table.layout script").count() == 0
    shot(page, "message-with-script")

    # Open the first dead letter, edit it (the field under the cursor is named), replay the copy.
    _go(page, "Dead letters")
    row = page.locator("#letters tr", has_text="E2E-BAD-1")
    expect(row).to_be_visible()
    shot(page, "dead-letters")
    row.get_by_role("link", name="Open").click()
    editor = page.get_by_label(re.compile("Edit the message"))
    expect(editor).to_be_visible()
    text = editor.input_value()
    assert "PID|1||||Broken^Jane" in text
    editor.fill(text.replace("PID|1||||", "PID|1||E2E-FIX-1^^^HOSP^MR||"))
    editor.focus()
    editor.evaluate(
        "(box) => box.setSelectionRange(box.value.indexOf('E2E-FIX-1') + 2, box.value.indexOf('E2E-FIX-1') + 2)"
    )
    editor.press("ArrowRight")
    expect(page.locator("#cursor")).to_contain_text("PID-3 Patient Identifier List, component 1")
    shot(page, "dead-letter-edited")
    page.get_by_role("button", name="Replay edited message").click()
    expect(page.get_by_role("status")).to_contain_text("Done: replayed")
    shot(page, "dead-letter-replayed")

    # The other letter with a replay job over the list's filter; watch it finish.
    _go(page, "Dead letters")
    page.get_by_label("Sender").fill("LAB|EAST")
    page.get_by_role("button", name="Filter", exact=True).click()
    expect(page.locator("#letters tr", has_text="E2E-BAD-2")).to_be_visible()
    page.get_by_role("button", name=re.compile("Replay all open letters matching")).click()
    expect(page.get_by_role("heading", name="Replay job")).to_be_visible()
    shot(page, "job-running")
    expect(page.locator("#job-status")).to_have_text("done")  # the page refreshes itself
    expect(page.locator("#job-queued")).to_have_text("1")
    shot(page, "job-done")

    # The Patient the edited replay wrote, found by its new MRN, its JSON one click away.
    _search(page, "Patient identifier (MRN)", "E2E-FIX-1")
    page.locator("#found").get_by_role("link", name="Open").click()
    expect(page.locator("h1")).to_contain_text("processed")
    page.locator("#resources").get_by_role("link", name=re.compile(r"^Patient\b")).click()
    expect(page.locator("pre.json")).to_contain_text('"value": "E2E-FIX-1"')
    shot(page, "patient")

    # A forged form (no CSRF token) from a signed-in browser is refused, and nothing happens.
    _go(page, "Dead letters")
    page.get_by_label("Status").select_option("open")
    page.get_by_role("button", name="Filter", exact=True).click()
    letter_link = page.locator("#letters tr", has_text="E2E-BAD-2").first.get_by_role("link", name="Open")
    letter_url = letter_link.get_attribute("href")
    with page.expect_navigation():
        page.evaluate(
            """(action) => { const form = document.createElement('form'); form.method = 'post'; form.action = action;
        document.body.appendChild(form); form.submit(); }""",
            f"{letter_url}/replay",
        )
    expect(page.get_by_role("alert")).to_contain_text("CSRF")
    shot(page, "forged-form-refused")

    assert dialogs == [], "a script in the data ran"
    assert csp_violations == [], csp_violations

    # A reader's token opens no console.
    reader = browser.new_context().new_page()
    _sign_in(reader, gateway, "reader-token-1")
    expect(reader.get_by_role("alert")).to_contain_text("reader token cannot use the console")
    assert reader.url.endswith("/console/login")
    shot(reader, "reader-refused")
