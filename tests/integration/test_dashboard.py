"""/dashboard in a real headless browser (Debian's chromium through selenium): the admin
token, given once in the address, is traded for an HttpOnly cookie; the page loads,
shows the numbers the API returns, logs no console errors; a screenshot is saved."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis

from models.datasets import read_clicks, sessionize
from models.registry import Registry
from state.feedback import FeedbackRecorder
from stream.devstack import EmbeddedStack, free_port
from stream.testing import WorkerProcess, consume, produce
from stream.topics import ensure_topics
from tests.integration.helpers import ADMIN, http_call, make_config, wait_for_ok

pytestmark = pytest.mark.broker_agnostic

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def browser():  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--window-size=1200,1400"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
    ".ci/run installs them)",
)
def test_dashboard_shows_what_the_api_returns(
    stack: EmbeddedStack,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    trained_model_dir: Path,
    eshop_csv: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    tenant = unique_name("dash")
    models = tmp_path / "models"
    shutil.copytree(trained_model_dir / "default", models / tenant)
    registry = Registry(models)
    registry.register(tenant, registry.load(tenant), {})  # v2, for an experiment
    cfg = make_config(stack, unique_name, tmp_path, models)
    port = free_port()
    feedback_topic = unique_name("feedback")
    ensure_topics(stack.broker, [feedback_topic], partitions=4)
    cfg.extra_env.update(
        {
            "STREAMREC_WEB_PORT": str(port),
            "STREAMREC_FEEDBACK_TOPIC": feedback_topic,
            "STREAMREC_ADMIN_TOKEN": ADMIN,
            "STREAMREC_PUBLIC_DASHBOARD": "",  # the default: the admin token
        }
    )
    env = cfg.env()
    done = subprocess.run(
        [sys.executable, "-m", "stream", "experiment", "start", tenant, "--variant", "v2",
         "--share", "0.5"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sessions = sessionize(read_clicks(eshop_csv, fmt="eshop"))[:300]
    now = time.time()
    clicks = [
        (f"d{n}".encode(), orjson.dumps(
            {"tenant": tenant, "session_id": f"d{n}", "item_id": item, "ts": now,
             "event_id": f"d{n}-{j}"}))
        for n, s in enumerate(sessions)
        for j, item in enumerate(s)
    ]  # fmt: skip
    # Earlier traffic in the window, counted as the worker counts it, so that the chart
    # has a line over time to draw (the live clicks below all land in the newest bucket).
    history = 0
    for minutes_ago in (50, 40, 30, 20, 10):
        recorder = FeedbackRecorder(bucket_s=60, clock=lambda m=minutes_ago: now - 60 * m)
        for variant, rate in (("v1", 0.1 + minutes_ago / 500), ("v2", 0.3 - minutes_ago / 500)):
            recorder.recommended(tenant, variant, 200)
            for _ in range(round(200 * rate)):
                recorder.hit(tenant, variant, 1)
            history += 200
        with redis.Redis.from_url(stack.redis_url) as client:
            for command in recorder.take()[1]:
                client.execute_command(*command)
    base = f"http://127.0.0.1:{port}"
    with WorkerProcess(cfg) as worker:
        assert wait_for_ok(f"{base}/health")[0] == 200, worker.log()[-3000:]
        produce(stack.broker, cfg.clicks, clicks)
        assert len(consume(stack.broker, cfg.recs, len(clicks), timeout=60)) >= len(clicks)
        deadline = time.monotonic() + 20
        while True:  # the last batch's counters go out within a second or two
            status, body = http_call(f"{base}/v1/{tenant}/stats?since=3600")
            stats = json.loads(body)
            counted = sum(v["recommendations"] for v in stats.get("variants", {}).values())
            if counted >= history + len(clicks) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status == 200 and counted == history + len(clicks), stats
        assert http_call(f"{base}/dashboard/data.json?since=3600")[0] == 401
        data = json.loads(http_call(f"{base}/dashboard/data.json?since=3600", key=ADMIN)[1])

        driver = browser()
        try:
            driver.get(f"{base}/dashboard?since=3600")  # no token: no page
            assert "admin token" in driver.page_source and 'id="tenants"' not in driver.page_source
            driver.get_log("browser")  # that 401 is logged as an error: not the page's
            # The token once, in the address: traded for a cookie, then left out of it.
            driver.get(f"{base}/dashboard?since=3600&token={ADMIN}")
            WebDriverWait(driver, 20).until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "1"
            )
            assert driver.current_url == f"{base}/dashboard?since=3600", driver.current_url
            (cookie,) = driver.get_cookies()
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
            assert ADMIN not in cookie["value"]
            assert driver.execute_script("return document.cookie") == ""  # out of JS's reach
            shot = tmp_path / "dashboard.png"
            driver.save_screenshot(str(shot))
            print(f"\nscreenshot: {shot}")
            row = driver.find_element(By.CSS_SELECTOR, f'#tenants tr[data-tenant="{tenant}"]')

            def cell(parent, field: str) -> str:  # type: ignore[no-untyped-def]
                return parent.find_element(By.CSS_SELECTOR, f'[data-field="{field}"]').text

            assert cell(row, "mode") == "on" and cell(row, "policy") == "ab"
            assert cell(row, "version") == registry.current_version(tenant)
            assert int(cell(row, "recommendations")) == history + len(clicks)
            box = driver.find_element(By.CSS_SELECTOR, f'div.tenant[data-tenant="{tenant}"]')
            for variant, v in stats["variants"].items():
                line = box.find_element(By.CSS_SELECTOR, f'tr[data-variant="{variant}"]')
                assert int(cell(line, "recommendations")) == v["recommendations"]
                assert int(cell(line, "hits")) == v["hits"]
                assert cell(line, "hit_rate") == f"{v['hit_rate']:.4f}"
            assert set(stats["variants"]) == {"v1", "v2"}
            # A line per variant through the buckets with traffic (6+), between labelled
            # axes (rates and times) and a legend.
            lines = box.find_elements(By.CSS_SELECTOR, "svg path[data-variant]")
            assert sorted(e.get_attribute("data-variant") for e in lines) == ["v1", "v2"]
            assert all(e.get_attribute("d").count("L") >= 5 for e in lines), [
                e.get_attribute("d") for e in lines
            ]
            axis = [e.text for e in box.find_elements(By.CSS_SELECTOR, "svg text.axis")]
            assert axis[0] == "0 %" and len(axis) == 5 and all(axis), axis
            legend = box.find_elements(By.CSS_SELECTOR, "svg text.legend")
            assert [e.text for e in legend] == ["v1", "v2"]
            experiment = box.find_element(By.CSS_SELECTOR, "p.experiment")
            # The decision the API gives (two copies of one model: usually "running").
            shown_decision = experiment.get_attribute("data-decision")
            api = json.loads(http_call(f"{base}/dashboard/data.json?since=3600", key=ADMIN)[1])
            (entry,) = [t for t in api["tenants"] if t["tenant"] == tenant]
            assert (
                shown_decision == entry["experiment"]["decision"] in ("running", "promote", "keep")
            )
            assert "50.00 %" in experiment.text
            for mode, n in data["modes"].items():
                shown = driver.find_element(By.CSS_SELECTOR, f'span[data-mode="{mode}"]').text
                assert shown == f"{mode}: {n}"
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
            # /docs renders the API's operations from files the worker serves itself.
            driver.get(f"{base}/docs")
            WebDriverWait(driver, 20).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
            )
            paths = {e.text for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
            assert "/v1/{tenant}/events" in {p.replace("\u200b", "") for p in paths}, paths
            driver.save_screenshot(str(tmp_path / "docs.png"))
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
        finally:
            driver.quit()
    assert shot.stat().st_size > 10_000
