"""The console's "newcomer in two minutes" path, walked by a browser that knows only the console's
address and an operator token, and follows nothing but what the pages show:

    python benchmarks/console_newcomer.py [--screenshots DIR]

Starts ``hl7gw run`` in a temporary directory (embedded Redis, SQLite), sends one message that
cannot be converted (no patient identifier), then in Debian's chromium: open /console, paste the
token, follow the dashboard's red count of open dead letters, open the letter, read why, add the
identifier in the editor, press "Replay edited message", and wait until the message page says
processed. Prints each step with the clicks and keystrokes it took and the time the pages took;
the figure for people is the step count, since a person reads slower than a browser clicks.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.support.gateway_process import GatewayProcess  # noqa: E402
from tests.support.mllp import send_raw  # noqa: E402

TOKENS = "newcomer:newcomer-token-1:operator"
BROKEN = "MSH|^~\\&|LAB|EAST|GW|GW|20240501120000||ADT^A08^ADT_A01|NEW-1|P|2.5.1\rPID|1||||Doe^Jane\r"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshots", type=Path, help="save a screenshot of each step here")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        print("no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        gateway = GatewayProcess(Path(tmp) / "data")
        gateway.env["HL7GW_API_TOKENS"] = TOKENS
        gateway.start()
        try:
            send_raw(BROKEN.encode(), gateway.mllp_port)
            return walk(gateway, chromium, args.screenshots)
        finally:
            gateway.stop()


def walk(gateway: GatewayProcess, chromium: str, screenshots: Path | None) -> int:
    steps: list[tuple[str, int, float]] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        expect.set_options(timeout=60_000)
        started = time.monotonic()

        def step(what: str, actions: int) -> None:
            steps.append((what, actions, time.monotonic() - started))
            if screenshots is not None:
                screenshots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshots / f"{len(steps):02d}.png"), full_page=True)

        page.goto(f"{gateway.base_url}/console")
        step("open the console's address: the sign-in page says which token to paste", 1)
        page.get_by_label("API token").fill("newcomer-token-1")
        page.get_by_role("button", name="Sign in").click()
        step("paste the token, press Sign in: the dashboard", 2)
        failed = page.locator("#senders a.bad")  # the red count of open dead letters
        expect(failed).to_have_text("1")
        failed.click()
        step("click the red count of open dead letters: the sender's letters", 1)
        page.locator("#letters").get_by_role("link", name="Open").click()
        step("click Open: why it failed, the message by field, the editor", 1)
        editor = page.get_by_label(re.compile("Edit the message"))
        editor.fill(editor.input_value().replace("PID|1||||", "PID|1||NEW-MRN^^^HOSP^MR||"))
        step("type the missing identifier into PID-3", 1)
        page.get_by_role("button", name="Replay edited message").click()
        expect(page.get_by_role("status")).to_contain_text("Done: replayed")
        step("press Replay edited message", 1)
        page.get_by_role("status").get_by_role("link").click()
        deadline = time.monotonic() + 60
        while "processed" not in (page.locator("h1").text_content() or "") and time.monotonic() < deadline:
            page.wait_for_timeout(500)
            page.reload()
        expect(page.locator("h1")).to_contain_text("processed")
        step("follow the replay's link: the message page says processed", 1)
        browser.close()
    print(f"{'step':<78} {'actions':>7} {'at (s)':>7}")
    for what, actions, at in steps:
        print(f"{what:<78} {actions:>7} {at:>7.1f}")
    print(f"{len(steps)} pages, {sum(a for _, a, _ in steps)} clicks or entries, {steps[-1][2]:.1f} s for the browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
