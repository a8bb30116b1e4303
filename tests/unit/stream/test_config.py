from __future__ import annotations

import logging
import traceback
from pathlib import Path

import pytest

from models.errors import InvalidSettingError
from stream.cli import main
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


SECRETS = {
    "STREAMREC_ADMIN_TOKEN": "tok-5ecret",
    "STREAMREC_REDIS_URL": "redis://:redis-pw-5ecret@h:6379/0",
    "STREAMREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "STREAMREC_KAFKA_SASL_USERNAME": "streamrec",
    "STREAMREC_KAFKA_SASL_PASSWORD": "sasl-5ecret",
    "STREAMREC_KAFKA_SSL_KEY_PASSWORD": "key-5ecret",
}


def test_secrets_never_print_but_reach_the_clients_that_use_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = Settings.from_env(SECRETS)
    log = logging.getLogger("streamrec.test")
    with caplog.at_level(logging.INFO):
        log.info("settings: %s %r", s, s)
        log.info("token %s, url %s", s.admin_token, s.redis_url)
        log.info("passwords %s %s", s.kafka_sasl_password, s.kafka_ssl_key_password)
    shown = [repr(s), str(s), s.model_dump_json(), str(s.model_dump()), caplog.text]
    for text in shown:
        assert "5ecret" not in text, text
    assert "redis://:***@h:6379/0" == s.redis_display
    # Read where they are used, and only there.
    assert s.admin_token.get_secret_value() == "tok-5ecret"
    assert s.redis.url == "redis://:redis-pw-5ecret@h:6379/0"
    conf = s.kafka.common()
    assert (conf["sasl.password"], conf["ssl.key.password"]) == ("sasl-5ecret", "key-5ecret")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"STREAMREC_PARTITIONS": "many"}, "STREAMREC_PARTITIONS='many'"),
        ({"STREAMREC_FEEDBACK": "maybe"}, "STREAMREC_FEEDBACK='maybe'"),
        ({"STREAMREC_WEB_PORT": "70000"}, "STREAMREC_WEB_PORT"),
        ({"STREAMREC_RANK_THREADS": "0"}, "STREAMREC_RANK_THREADS"),
        ({"STREAMREC_WEB_HEADER_TIMEOUT_S": "0"}, "STREAMREC_WEB_HEADER_TIMEOUT_S"),
        ({"STREAMREC_BROKER": "k:1,k:99999"}, "STREAMREC_BROKER"),
        ({"STREAMREC_DELIVERY": "twice"}, "STREAMREC_DELIVERY='twice'"),
        ({"STREAMREC_REDIS_RETRIES": "-1"}, "STREAMREC_REDIS_RETRIES"),
        ({"STREAMREC_REDIS_URL": "redis://:redis-pw-5ecret@h:0/0"}, "STREAMREC_REDIS_URL"),
        ({"STREAMREC_REDIS_URL": "redis://:redis-pw-5ecret@h:port/0"}, "STREAMREC_REDIS_URL"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable_and_never_a_secret(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(InvalidSettingError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert variable in message and "\n" not in message, message
    # Not in the message, nor in a traceback that chains the error underneath.
    assert "5ecret" not in "".join(traceback.format_exception(caught.value))


def test_overrides_are_typed_and_checked_like_the_variables() -> None:
    s = Settings.from_env({"STREAMREC_ADMIN_TOKEN": "tok-5ecret"})
    changed = s.with_(partitions="8", web_port=None, redis_url="redis://:pw@r:1/0")
    assert changed.partitions == 8 and changed.web_port == s.web_port
    assert changed.redis.url == "redis://:pw@r:1/0" and "pw@" not in repr(changed)
    assert changed.admin_token == s.admin_token and s.partitions == 4
    with pytest.raises(InvalidSettingError, match="STREAMREC_WEB_PORT"):
        s.with_(web_port=70000)
    with pytest.raises(InvalidSettingError, match="STREAMREC_BATCH_SIZE='lots'"):
        s.with_(batch_size="lots")
    with pytest.raises(InvalidSettingError, match="STREAMREC_KAFKA_SASL_PASSWORD") as caught:
        s.with_(kafka_sasl_password=5_314_159)  # not a string: refused, and not quoted
    assert "5314159" not in str(caught.value)


def test_the_cli_says_a_bad_setting_in_one_line_and_help_shows_no_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path))
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    out = capsys.readouterr().out
    assert "redis://127.0.0.1:16379/0" in out and "5ecret" not in out
    monkeypatch.setenv("STREAMREC_FEEDBACK", "maybe")
    with pytest.raises(SystemExit) as exit_:
        main(["models", "list"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1, err
    assert "STREAMREC_FEEDBACK='maybe'" in err and "5ecret" not in err
