from __future__ import annotations

from pathlib import Path

import pytest

from tongban.exchange.errors import ConfigInvalid
from tongban.exchange.settings import ListenAddress, load_settings, parse_listen_address


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (
        "TONGBAN_DATA_DIR",
        "TONGBAN_GRPC_LISTEN",
        "TONGBAN_DATABASE_URL",
        "TONGBAN_STATUS_LIST_TTL_SECONDS",
    ):
        monkeypatch.delenv(key, raising=False)
    settings = load_settings()
    assert settings.data_dir == Path("var/tongban")
    assert settings.grpc_listen == ListenAddress("127.0.0.1", 50051)
    assert settings.http_listen == ListenAddress("127.0.0.1", 8080)
    assert settings.database_url is None
    assert settings.status_list_ttl_seconds == 300


def test_status_list_ttl_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TONGBAN_STATUS_LIST_TTL_SECONDS", "1")
    assert load_settings().status_list_ttl_seconds == 1
    monkeypatch.setenv("TONGBAN_STATUS_LIST_TTL_SECONDS", "86400")
    assert load_settings().status_list_ttl_seconds == 86_400


def test_environment_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TONGBAN_GRPC_LISTEN", "0.0.0.0:6000")
    monkeypatch.setenv("TONGBAN_NODE_HOSTNAMES", "exchange.gov.example, localhost")
    settings = load_settings(http_listen="[::1]:9000")
    assert settings.grpc_listen == ListenAddress("0.0.0.0", 6000)
    assert settings.http_listen == ListenAddress("::1", 9000)
    assert str(settings.http_listen) == "[::1]:9000"
    assert settings.node_hostnames == ("exchange.gov.example", "localhost")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("TONGBAN_GRPC_LISTEN", "nonsense", "TONGBAN_GRPC_LISTEN='nonsense': expected HOST:PORT"),
        ("TONGBAN_HTTP_LISTEN", "127.0.0.1:99999", "TONGBAN_HTTP_LISTEN"),
        ("TONGBAN_DATABASE_URL", "mysql://x", "TONGBAN_DATABASE_URL: expected a URL"),
        (
            "TONGBAN_MIGRATION_DATABASE_URL",
            "mysql://x",
            "TONGBAN_MIGRATION_DATABASE_URL: expected a URL",
        ),
        # The trust list names <public URL>/status-lists/: no dot segments, no user info.
        ("TONGBAN_PUBLIC_URL", "https://h/a/../b", "TONGBAN_PUBLIC_URL"),
        ("TONGBAN_PUBLIC_URL", "https://user@h", "TONGBAN_PUBLIC_URL"),
        ("TONGBAN_DB_POOL_SIZE", "0", "TONGBAN_DB_POOL_SIZE='0'"),
        ("TONGBAN_NODE_NAME", "Node One", "TONGBAN_NODE_NAME"),
        ("TONGBAN_NODE_IPS", "300.1.1.1", "TONGBAN_NODE_IPS"),
        ("TONGBAN_LOG_LEVEL", "LOUD", "TONGBAN_LOG_LEVEL"),
        # A status list's ttl: at least a second, at most the token's one-day lifetime.
        ("TONGBAN_STATUS_LIST_TTL_SECONDS", "0", "TONGBAN_STATUS_LIST_TTL_SECONDS='0'"),
        ("TONGBAN_STATUS_LIST_TTL_SECONDS", "-5", "TONGBAN_STATUS_LIST_TTL_SECONDS='-5'"),
        ("TONGBAN_STATUS_LIST_TTL_SECONDS", "86401", "less than or equal to 86400"),
        ("TONGBAN_STATUS_LIST_TTL_SECONDS", "1.5", "TONGBAN_STATUS_LIST_TTL_SECONDS='1.5'"),
        ("TONGBAN_STATUS_LIST_TTL_SECONDS", "5m", "TONGBAN_STATUS_LIST_TTL_SECONDS='5m'"),
    ],
)
def test_bad_values_are_named_in_one_sentence(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigInvalid) as caught:
        load_settings()
    assert expected in caught.value.message
    assert caught.value.reason == "CONFIG_INVALID"


def test_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TONGBAN_DATABASE_URL", "mysql://user:hunter2@db")
    with pytest.raises(ConfigInvalid) as caught:
        load_settings()
    assert "hunter2" not in caught.value.message


def test_override_is_named_as_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigInvalid) as caught:
        load_settings(grpc_listen="localhost:http")
    assert caught.value.message.startswith("--grpc-listen=")


@pytest.mark.parametrize("text", ["", ":80", "host:", "[::1]80", "a b:1", "[zz]:1"])
def test_parse_listen_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        parse_listen_address(text)
