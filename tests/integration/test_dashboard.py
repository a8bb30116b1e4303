"""/dashboard in a real headless browser (Debian's chromium through selenium): the admin
token, given once in the address, is traded for an HttpOnly cookie; the page loads and
shows what the worker knows (throughput, latency, consumer lag per partition, dead
letters by reason, each tenant's version timeline, hit rates per variant and per
experiment arm), each quantity in one format, on time axes that fit the data; the "try a
session" box ranks typed items; no console errors. The screenshot is kept (its path is
printed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis

from models.datasets import read_clicks, sessionize
from models.ranking import STRATEGIES
from models.registry import Registry
from state.feedback import FeedbackRecorder
from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerProcess, consume, produce
from stream.kafka.topics import ensure_topics
from stream.pipeline.metrics import LiveWindow
from tests.integration.helpers import ADMIN, http_call, make_config, wait_for_ok

pytestmark = pytest.mark.broker_agnostic

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# One format per quantity, wherever it appears on the page.
PERCENT = re.compile(r"\d{1,3}\.\d %")
RATE = re.compile(r"\d{1,3}(,\d{3})*\.\d /s")
MILLIS = re.compile(r"\d{1,3}(,\d{3})*\.\d ms")
COUNT = re.compile(r"\d{1,3}(,\d{3})*")
SCORE = re.compile(r"-?\d+\.\d{4}")


def count(text: str) -> int:
    assert COUNT.fullmatch(text), text
    return int(text.replace(",", ""))


def post(url: str, body: object, headers: dict[str, str]) -> int:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return err.code


def path_xs(d: str) -> list[float]:
    """The x of every point of an SVG path written as ``M x,y L x,y ...``."""
    return [float(x) for x in re.findall(r"[ML]\s*(-?[\d.]+)\s*,", d)]


def fits(chart, series: str) -> list[float]:  # type: ignore[no-untyped-def]
    """The line's xs, after checking it spans most of the plot's width: the axis is
    the data's, not a fixed window that squeezes recent points to one edge."""
    from selenium.webdriver.common.by import By

    line = chart.find_element(By.CSS_SELECTOR, f'path[data-series="{series}"]')
    d = line.get_attribute("d")
    assert d.startswith("M") and d.count("M") == 1, d  # one line through every point
    xs = path_xs(d)
    left, right = (float(v) for v in chart.get_attribute("data-plot-x").split(","))
    assert len(xs) >= 2 and xs == sorted(xs), xs
    assert xs[-1] - xs[0] >= 0.8 * (right - left), (xs, left, right)
    return xs


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
    # The version timeline: v2 promoted, then rolled back to v1.
    registry.promote(tenant, "v2")
    registry.rollback(tenant, "v1")
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
        (f"d{n}".encode(),
         {"tenant": tenant, "session_id": f"d{n}", "item_id": item, "event_id": f"d{n}-{j}"})
        for n, s in enumerate(sessions)
        for j, item in enumerate(s)
    ]  # fmt: skip

    def stamped(part: list[tuple[bytes, dict]]) -> list[tuple[bytes, bytes]]:
        # Event time = sending time: the latency shown is the worker's, not the test's.
        ts = time.time()
        return [(key, orjson.dumps({**event, "ts": ts})) for key, event in part]

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
        # Two bursts some seconds apart: two points on the live charts, joined by a line.
        half = len(clicks) // 2
        produce(stack.broker, cfg.clicks, stamped(clicks[:half]))
        assert len(consume(stack.broker, cfg.recs, half, timeout=60)) >= half
        time.sleep(LiveWindow.STEP_S + 1)
        produce(stack.broker, cfg.clicks, stamped(clicks[half:]))
        assert len(consume(stack.broker, cfg.recs, len(clicks), timeout=60)) >= len(clicks)
        produce(stack.broker, cfg.clicks, [(b"bad", b"{not json")])
        assert len(consume(stack.broker, cfg.dlq, 1, timeout=30)) == 1
        deadline = time.monotonic() + 20
        while True:  # the last batch's counters go out within a second or two
            status, body = http_call(f"{base}/v1/{tenant}/stats?since=3600")
            stats = json.loads(body)
            counted = sum(v["recommendations"] for v in stats.get("variants", {}).values())
            if counted >= history + len(clicks) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status == 200 and counted == history + len(clicks), stats
        # From now on the tenant takes its keys only (or the admin token).
        status, body = http_call(f"{base}/v1/admin/tenants/{tenant}/keys", {}, key=ADMIN)
        assert status == 201, body
        ranking = {"items": sessions[0][:3]}
        assert http_call(f"{base}/v1/{tenant}/recommendations", ranking)[0] == 401
        assert http_call(f"{base}/dashboard/data.json?since=3600")[0] == 401
        for bad in ("-1", "abc", "1e9"):  # a reason, never a 500
            status, body = http_call(f"{base}/dashboard/data.json?since={bad}", key=ADMIN)
            assert status == 400 and "since" in json.loads(body)["error"], (bad, status, body)
        data = json.loads(http_call(f"{base}/dashboard/data.json?since=3600", key=ADMIN)[1])

        driver = browser()
        try:
            driver.get(f"{base}/dashboard?since=3600")  # no token: no page
            assert "admin token" in driver.page_source and 'id="tenants"' not in driver.page_source
            driver.get_log("browser")  # that 401 is logged as an error: not the page's
            # The token once, in the address: traded for a cookie, then left out of it.
            # (refresh=0: the page stays as first drawn while the test reads it)
            driver.get(f"{base}/dashboard?since=3600&refresh=0&token={ADMIN}")
            WebDriverWait(driver, 20).until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "1"
            )
            assert driver.current_url == f"{base}/dashboard?since=3600&refresh=0"
            (cookie,) = driver.get_cookies()
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
            assert ADMIN not in cookie["value"]
            assert driver.execute_script("return document.cookie") == ""  # out of JS's reach
            shot = tmp_path / "dashboard.png"

            def snap() -> None:  # the whole page, kept as the test's artefact
                height = driver.execute_script("return document.body.scrollHeight")
                driver.set_window_size(1280, height + 200)
                driver.save_screenshot(str(shot))
                print(f"\nscreenshot: {shot}")

            snap()
            row = driver.find_element(By.CSS_SELECTOR, f'#tenants tr[data-tenant="{tenant}"]')

            def cell(parent, field: str) -> str:  # type: ignore[no-untyped-def]
                return parent.find_element(By.CSS_SELECTOR, f'[data-field="{field}"]').text

            assert cell(row, "mode") == "on" and cell(row, "policy") == "ab"
            assert cell(row, "version") == registry.current_version(tenant) == "v1"
            assert count(cell(row, "recommendations")) == history + len(clicks)
            # Hit rates everywhere as a percentage with one decimal.
            for shown in driver.find_elements(By.CSS_SELECTOR, '[data-field="hit_rate"]'):
                assert PERCENT.fullmatch(shown.text) or shown.text == "-", shown.text

            # This worker's throughput and latency, as numbers and over time.
            live = driver.find_element(By.ID, "live")
            for field in ("events_per_s", "recs_per_s"):
                assert RATE.fullmatch(cell(live, field)), cell(live, field)
                assert float(cell(live, field)[:-3].replace(",", "")) > 0
            for field in ("p50_ms", "p99_ms"):
                assert MILLIS.fullmatch(cell(live, field)), cell(live, field)
            throughput = live.find_element(By.CSS_SELECTOR, 'svg[data-chart="throughput"]')
            fits(throughput, "events in")
            fits(throughput, "recommendations out")
            # Each burst is counted when it was processed: two points above zero.
            line = throughput.find_element(By.CSS_SELECTOR, 'path[data-series="events in"]')
            ys = [float(y) for y in re.findall(r",(-?[\d.]+)", line.get_attribute("d"))]
            assert sum(y < max(ys) - 1 for y in ys) >= 2, line.get_attribute("d")
            latency = live.find_element(By.CSS_SELECTOR, 'svg[data-chart="latency"]')
            fits(latency, "p99")
            # Consumer lag: a row per partition of the clicks topic, all read.
            lags = {
                r.get_attribute("data-partition"): count(cell(r, "lag"))
                for r in driver.find_elements(By.CSS_SELECTOR, "#lag tr[data-partition]")
            }
            assert {f"{cfg.clicks}:{p}" for p in range(4)} <= set(lags), lags
            assert all(lags[f"{cfg.clicks}:{p}"] == 0 for p in range(4)), lags
            dead = driver.find_element(
                By.CSS_SELECTOR, '#dead-letters tr[data-reason="value is not valid JSON"]'
            )
            assert count(cell(dead, "count")) == 1

            box = driver.find_element(By.CSS_SELECTOR, f'div.tenant[data-tenant="{tenant}"]')
            # The version timeline: v1, v2 promoted, rolled back to v1.
            timeline = box.find_element(By.CSS_SELECTOR, "svg.timeline")
            steps = [
                (e.get_attribute("data-action"), e.get_attribute("data-version"))
                for e in timeline.find_elements(By.CSS_SELECTOR, "[data-action]")
            ]
            assert steps[-2:] == [("promote", "v2"), ("rollback", "v1")], steps
            for variant, v in stats["variants"].items():
                line = box.find_element(By.CSS_SELECTOR, f'tr[data-variant="{variant}"]')
                assert count(cell(line, "recommendations")) == v["recommendations"]
                assert count(cell(line, "hits")) == v["hits"]
                assert cell(line, "hit_rate") == f"{100 * v['hit_rate']:.1f} %"
                low, high = v["ci"]
                assert cell(line, "ci") == f"{100 * low:.1f} % - {100 * high:.1f} %"
            assert set(stats["variants"]) == {"v1", "v2"}
            # A line per variant through the buckets with traffic (6+), on a time axis that
            # fits them, between labelled axes (rates and times) and a legend.
            chart = box.find_element(By.CSS_SELECTOR, 'svg[data-chart="hit_rate"]')
            lines = chart.find_elements(By.CSS_SELECTOR, "path[data-series]")
            assert sorted(e.get_attribute("data-series") for e in lines) == ["v1", "v2"]
            for variant in ("v1", "v2"):
                assert len(fits(chart, variant)) >= 6
            axis = [e.text for e in chart.find_elements(By.CSS_SELECTOR, "text.axis")]
            assert axis[0] == "0.0 %" and len(axis) >= 5 and all(axis), axis
            legend = chart.find_elements(By.CSS_SELECTOR, "text.legend")
            assert [e.text for e in legend] == ["v1", "v2"]
            # Per experiment arm: its share, what it served, hits, hit rate and interval.
            api = json.loads(http_call(f"{base}/dashboard/data.json?since=3600", key=ADMIN)[1])
            (entry,) = [t for t in api["tenants"] if t["tenant"] == tenant]
            experiment = box.find_element(By.CSS_SELECTOR, ".experiment")
            for arm, a in entry["experiment"]["arms"].items():
                line = experiment.find_element(By.CSS_SELECTOR, f'tr[data-arm="{arm}"]')
                assert cell(line, "share") == "50.0 %"
                assert count(cell(line, "recommendations")) == a["recommendations"] > 0
                assert count(cell(line, "hits")) == a["hits"]
                assert cell(line, "hit_rate") == f"{100 * a['hit_rate']:.1f} %"
                low, high = a["ci"]
                assert cell(line, "ci") == f"{100 * low:.1f} % - {100 * high:.1f} %"
            # The decision the API gives (two copies of one model: usually "running").
            shown_decision = experiment.get_attribute("data-decision")
            assert (
                shown_decision == entry["experiment"]["decision"] in ("running", "promote", "keep")
            )
            # Try a session: type item ids, get the ranked list with scores and its source.
            from selenium.webdriver.support.ui import Select

            Select(driver.find_element(By.ID, "try-tenant")).select_by_value(tenant)
            typed = driver.find_element(By.ID, "try-items")
            typed.send_keys(", ".join(sessions[0][:3]))
            driver.find_element(By.ID, "try-go").click()
            WebDriverWait(driver, 20).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, "#try-result tr[data-item]")
            )
            ranked = driver.find_elements(By.CSS_SELECTOR, "#try-result tr[data-item]")
            assert len(ranked) == 10, driver.find_element(By.ID, "try-result").text
            assert all(SCORE.fullmatch(cell(r, "score")) for r in ranked)
            # Each row names its item's source; the first row's is the list's.
            sources = [cell(r, "source") for r in ranked]
            assert set(sources) <= set(STRATEGIES), sources
            result = driver.find_element(By.ID, "try-result")
            assert sources[0] == result.get_attribute("data-source")
            assert "top of the list came from" not in result.text  # a column, not a line
            assert result.get_attribute("data-version") in ("v1", "v2")
            snap()
            for mode, n in data["modes"].items():
                shown = driver.find_element(By.CSS_SELECTOR, f'span[data-mode="{mode}"]').text
                assert shown == f"{mode}: {n}"
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
            # The box ranked with the dashboard's cookie, which reaches nothing that writes.
            with_cookie = {"Cookie": f"{cookie['name']}={cookie['value']}"}
            assert post(f"{base}/v1/{tenant}/recommendations", ranking, with_cookie) == 200
            click = {"session_id": "c1", "item_id": sessions[0][0]}
            assert post(f"{base}/v1/{tenant}/events", click, with_cookie) == 401
            assert post(f"{base}/v1/admin/tenants/{tenant}/keys", {}, with_cookie) == 401
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
    assert data["live"]["dead_letters"] == {"value is not valid JSON": 1}, data["live"]
