"""docker-compose.yml cannot run here (no Docker engine): its production settings are
checked as data, so that an edit that loosens them fails a test."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_the_workers_health_check_is_readiness() -> None:
    worker = _services()["worker"]
    check = " ".join(worker["healthcheck"]["test"])
    assert "/health/ready" in check
    # Prometheus waits for a ready worker.
    assert _services()["prometheus"]["depends_on"]["worker"]["condition"] == "service_healthy"


def test_production_is_locked_down() -> None:
    services = _services()
    env = services["worker"]["environment"]
    assert env["STREAMREC_AUTO_CREATE_TENANTS"] == "0"  # tenants created by an operator
    assert env["STREAMREC_REQUIRE_KEYS"] == "1"  # every tenant route needs a key
    assert env["STREAMREC_ADMIN_TOKEN"].startswith("${STREAMREC_ADMIN_TOKEN")  # no default
    assert env["STREAMREC_REDIS_URL"].startswith("redis://:${STREAMREC_REDIS_PASSWORD")
    assert "--requirepass" in services["redis"]["command"]
    # HTTP published on the host's loopback only.
    assert all(str(p).startswith("127.0.0.1:") for p in services["worker"]["ports"])


def test_tenant_numbers_need_the_admin_token_and_prometheus_sends_it() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    env = services["worker"]["environment"]
    assert env.get("STREAMREC_PUBLIC_DASHBOARD", "0") == "0"
    # No worker without a token: `docker compose` stops with this message instead.
    assert env["STREAMREC_ADMIN_TOKEN"].startswith("${STREAMREC_ADMIN_TOKEN:?")
    # Prometheus scrapes /metrics with that token, read from a compose secret.
    (secret,) = services["prometheus"]["secrets"]
    assert compose["secrets"][secret] == {"environment": "STREAMREC_ADMIN_TOKEN"}
    config = yaml.safe_load((COMPOSE.parent / "scripts/monitoring/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"] == {
        "type": "Bearer",
        "credentials_file": f"/run/secrets/{secret}",
    }
