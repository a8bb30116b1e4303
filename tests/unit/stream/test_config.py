from __future__ import annotations

from pathlib import Path

import pytest

from stream.config import Settings


def test_env_overrides_defaults_with_types() -> None:
    s = Settings.from_env(
        {
            "STREAMREC_BROKER": "k:1",
            "STREAMREC_PARTITIONS": "8",
            "STREAMREC_BATCH_WITHIN_S": "0.5",
            "STREAMREC_HOME": "/x",
        }
    )
    assert (s.broker, s.partitions, s.batch_within_s) == ("k:1", 8, 0.5)
    assert s.registry_dir == Path("/x/models") and s.run_dir == Path("/x/run")


def test_flags_win_over_env() -> None:
    s = Settings.from_env({"STREAMREC_BROKER": "k:1"}, broker="k:2", redis_url=None)
    assert s.broker == "k:2" and s.redis_url == Settings().redis_url


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="STREAMREC_PARTITIONS"):
        Settings.from_env({"STREAMREC_PARTITIONS": "many"})


def test_http_listens_on_loopback_unless_told_otherwise() -> None:
    assert Settings.from_env({}).web_host == "127.0.0.1"
    assert Settings.from_env({"STREAMREC_WEB_HOST": "0.0.0.0"}).web_host == "0.0.0.0"
    # The secrets stay out of the settings' repr (it may be logged).
    shown = repr(
        Settings.from_env(
            {"STREAMREC_ADMIN_TOKEN": "tok-123", "STREAMREC_REDIS_URL": "redis://:pw-9@h:1/0"}
        )
    )
    assert "tok-123" not in shown and "pw-9" not in shown


def test_closed_by_default() -> None:
    s = Settings.from_env({})
    assert s.auto_create_tenants is False  # tenants are created by an operator
    assert s.public_dashboard is False  # every tenant's numbers need the admin token
    assert 0 < s.web_header_timeout_s <= 30
    opened = Settings.from_env(
        {"STREAMREC_AUTO_CREATE_TENANTS": "1", "STREAMREC_PUBLIC_DASHBOARD": "1"}
    )
    assert opened.auto_create_tenants and opened.public_dashboard
