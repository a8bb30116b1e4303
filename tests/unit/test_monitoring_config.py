"""docker-compose's Prometheus and Grafana are provisioned from files in the repository
that agree with each other and with the worker: Prometheus scrapes the port the worker
serves HTTP on, the worker is health-checked there, Grafana's datasource is the one the
dashboard's panels name, and the dashboard shows what the issue asks for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "scripts/monitoring"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> repository path of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            out[target] = ROOT / source
    return out


def test_prometheus_scrapes_the_worker_on_its_http_port_and_grafana_is_provisioned() -> None:
    services = _yaml(ROOT / "docker-compose.yml")["services"]
    worker = services["worker"]
    port = int(worker["environment"]["STREAMREC_WEB_PORT"])
    assert port > 0 and worker["environment"]["STREAMREC_WEB_HOST"] == "0.0.0.0"
    assert f"127.0.0.1:{port}/health/ready" in " ".join(worker["healthcheck"]["test"])

    prometheus = _mounts(services["prometheus"])
    config = _yaml(prometheus["/etc/prometheus/prometheus.yml"])
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == port

    grafana = _mounts(services["grafana"])
    assert all(p.exists() for p in grafana.values()), grafana
    provisioning = grafana["/etc/grafana/provisioning"]
    (source,) = _yaml(provisioning / "datasources/prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = _yaml(provisioning / "dashboards/streamrec.yml")["providers"]
    dashboards = grafana[provider["options"]["path"]]
    (dashboard_file,) = dashboards.glob("*.json")
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{dashboard_file.name}"

    dashboard = json.loads(dashboard_file.read_text())
    named = {t["datasource"]["uid"] for p in dashboard["panels"] for t in [p, *p["targets"]]}
    assert named == {source["uid"]}
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dashboard["panels"]}
    wanted = {  # what the issue asks the dashboard to show -> a series that shows it
        "throughput": "rate(streamrec_events_total",
        "lag": "streamrec_consumer_lag",
        "latency": "streamrec_event_lag_seconds_bucket",
        "hit rate per tenant and variant": "sum by (tenant, variant) (rate(streamrec_hits_total",
        "tenants by mode": "by (mode) (streamrec_tenants)",
    }
    for what, series in wanted.items():
        assert any(series in e for e in exprs.values()), (what, exprs)


def test_the_feedback_topic_is_created_with_the_others() -> None:
    init = _yaml(ROOT / "docker-compose.yml")["services"]["kafka-init"]
    assert "feedback" in json.dumps(init)
