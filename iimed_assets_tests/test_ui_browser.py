"""The Dagster UI in a real browser: `dagster dev` on 127.0.0.1, driven by Playwright with Debian's
chromium. Opens the asset graph, materializes one source partition from the launch dialog, waits for
the run, and reads the asset-check results on the asset's Checks tab. Screenshots are written to
test-artifacts/ui/ (kept by CI as artifacts).

Needs a chromium binary: $IIMED_CHROMIUM, or `chromium` on PATH (`.ci/run` installs Debian's). Outside
CI the test is skipped when there is none; under CI=true a missing browser fails it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "ui"
ASSET = "eval_items"
PARTITION = "medicationqa"
CHECKS = ("rows_conserved", "row_count_in_bounds", "no_empty_prompts")


def _chromium() -> str | None:
    for candidate in (os.environ.get("IIMED_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dagster dev exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def dagster_dev(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "IIMED_WAREHOUSE": str(tmp_path / "warehouse.duckdb")}
    env.pop("IIMED_ALERT_WEBHOOK_URL", None)
    log = tmp_path / "dagster_dev.log"
    dagster = Path(sys.executable).with_name("dagster")
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(dagster), "dev", "-h", "127.0.0.1", "-p", str(port), "-m", "iimed_assets.definitions"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/server_info", 180, proc, log)
        yield f"http://127.0.0.1:{port}", home, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, ARTIFACTS / "dagster_dev.log")


def _wait_for_run(home: Path, timeout: float):
    import dagster as dg

    deadline = time.monotonic() + timeout
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while time.monotonic() < deadline:
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": PARTITION}))
            if runs and runs[0].is_finished:
                return runs[0]
            time.sleep(2)
    raise AssertionError(f"no finished run for {ASSET}[{PARTITION}] within {timeout}s")


@pytest.mark.slow
def test_materialize_a_partition_and_see_its_checks_in_the_browser(dagster_dev):
    chromium = _chromium()
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium: .ci/run must install it (apt-get install chromium)")
        pytest.skip("no chromium binary (set IIMED_CHROMIUM or install Debian's chromium)")
    from playwright.sync_api import expect, sync_playwright

    url, home, log = dagster_dev
    for stale in ARTIFACTS.glob("*.png"):
        stale.unlink()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)  # the code location loads after the server answers
        # The UI greets a first visit with a community sign-up dialog; mark it seen, as a click on Skip would.
        page.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
        try:
            # 1. The asset graph: every section's assets, cleaning downstream of them.
            page.goto(f"{url}/asset-groups", wait_until="networkidle")
            for group in ("sources", "qa", "instruct", "cleaning"):
                expect(page.get_by_text(group, exact=True).first).to_be_visible()
            page.screenshot(path=ARTIFACTS / "1-asset-graph.png")
            page.goto(f"{url}/locations/iimed_assets.definitions/asset-groups/sources", wait_until="networkidle")
            for name in (ASSET, "qa_seed_rows", "instruct_prompt_rows", "r1_trace_rows"):
                expect(page.get_by_text(name, exact=True).first).to_be_visible()
            page.screenshot(path=ARTIFACTS / "1b-sources-group.png")

            # 2. Materialize one source partition from the asset page's launch dialog.
            page.goto(f"{url}/assets/{ASSET}", wait_until="networkidle")
            page.get_by_role("button", name="Materialize").first.click()
            dialog = page.get_by_role("dialog").filter(has_text=f"Launch runs to materialize {ASSET}")
            expect(dialog).to_be_visible()
            dialog.get_by_role("button", name="Custom").click()
            dialog.get_by_text("partitions selected").click()
            page.get_by_role("menuitem", name="Select all").click()  # clear the selection
            page.get_by_role("menuitem", name=PARTITION).click()  # no other key contains it
            dialog.get_by_text(f"Launch runs to materialize {ASSET}").click()  # close the dropdown
            launch = dialog.get_by_role("button", name="Launch 1 run")
            expect(launch).to_be_enabled()
            page.screenshot(path=ARTIFACTS / "2-launch-one-partition.png")
            launch.click()
            expect(dialog).to_be_hidden()

            run = _wait_for_run(home, timeout=300)
            assert run.is_success, f"run {run.run_id} ended {run.status}:\n{log.read_text()[-3000:]}"
            assert run.tags["dagster/partition"] == PARTITION

            # 3. The check results on the asset's Checks tab.
            page.goto(f"{url}/assets/{ASSET}?view=checks", wait_until="networkidle")
            for check in CHECKS:
                expect(page.get_by_text(check, exact=True).first).to_be_visible()
            expect(page.get_by_text("Passed").first).to_be_visible()
            assert page.get_by_text("Failed", exact=True).count() == 0
            page.screenshot(path=ARTIFACTS / "3-asset-checks.png")

            # 4. The materialization's metadata: row count, preview, ledger breakdown.
            page.goto(f"{url}/assets/{ASSET}?view=partitions&partition={PARTITION}", wait_until="networkidle")
            expect(page.get_by_text("dagster/row_count").first).to_be_visible()
            expect(page.get_by_text("rejected_by_reason").first).to_be_visible()
            page.screenshot(path=ARTIFACTS / "4-partition-metadata.png", full_page=True)
        except Exception:
            page.screenshot(path=ARTIFACTS / "failure.png", full_page=True)
            raise
        finally:
            browser.close()
