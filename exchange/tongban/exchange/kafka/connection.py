"""How the node's Kafka clients reach the brokers: bootstrap servers, TLS and SASL.

``kafka_connection(settings, client_id)`` builds the one set of keyword arguments that
every aiokafka producer, consumer and admin client of the node takes, so no client can
connect with less protection than the settings ask for. ``start_client`` starts one and,
if that fails, says why in a sentence: aiokafka only logs the cause of a failed bootstrap
("Unable to bootstrap from …"), so the failure is diagnosed again step by step — TCP,
then the TLS handshake, then the SASL login — to tell a broker that is down from a
listener that does not speak TLS or a login the broker refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, UnsupportedSaslMechanismError

from tongban.exchange.errors import BrokerUnavailable, ConfigInvalid, KafkaSecurityFailed
from tongban.exchange.kafka._lifecycle import close_detached, start_or_close
from tongban.exchange.settings import Settings

__all__ = ["KafkaConnection", "kafka_connection", "start_client"]

#: How long each diagnosis step may take (the client's own attempt took longer already).
_PROBE_SECONDS = 5.0


@dataclass(frozen=True)
class KafkaConnection:
    """Where the brokers are and how to talk to them; ``kwargs`` go to every client."""

    bootstrap: str
    client_id: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaProducer``, ``AIOKafkaConsumer`` and
        ``AIOKafkaAdminClient``."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.ssl_context is not None:
            options["ssl_context"] = self.ssl_context
        if self.sasl_mechanism is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options

    def describe(self) -> str:
        """Where and how, for messages: ``kafka:9093 (SASL_SSL, SCRAM-SHA-512 as node)``."""
        how = self.security_protocol
        if self.sasl_mechanism is not None:
            how += f", {self.sasl_mechanism} as {self.sasl_username}"
        return f"{self.bootstrap} ({how})"


def kafka_connection(settings: Settings, client_id: str) -> KafkaConnection:
    """The connection settings of the node's Kafka clients, with the SASL password read
    from its file and the TLS context built. Raises ConfigInvalid if Kafka is not
    configured or the password or CA file cannot be used."""
    if settings.kafka_bootstrap is None:
        raise ConfigInvalid("TONGBAN_KAFKA_BOOTSTRAP is not set; Kafka mode needs it.")
    protocol = settings.kafka_security_protocol
    password: str | None = None
    mechanism: str | None = None
    if protocol.startswith("SASL_"):
        assert settings.kafka_sasl_password_file is not None  # checked at settings load
        password = _read_password(settings.kafka_sasl_password_file)
        mechanism = settings.kafka_sasl_mechanism
    context = _tls_context(settings) if protocol.endswith("SSL") else None
    return KafkaConnection(
        bootstrap=settings.kafka_bootstrap,
        client_id=client_id,
        security_protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username=settings.kafka_sasl_username if mechanism else None,
        sasl_password=password,
        ssl_context=context,
    )


def _read_password(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not UTF-8 text"
        raise ConfigInvalid(
            f"TONGBAN_KAFKA_SASL_PASSWORD_FILE={str(path)!r} cannot be read ({reason}); "
            "give a readable file holding the node's Kafka password."
        ) from e
    password = text.rstrip("\r\n")
    if not password or "\n" in password:
        raise ConfigInvalid(
            f"TONGBAN_KAFKA_SASL_PASSWORD_FILE={str(path)!r} must hold the password on one "
            "line, and nothing else."
        )
    return password


def _tls_context(settings: Settings) -> ssl.SSLContext:
    """Verify the brokers' certificates and host names (against the CA file, or the
    system's CAs), TLS 1.2 or later."""
    try:
        context = ssl.create_default_context(
            cafile=str(settings.kafka_ca_file) if settings.kafka_ca_file is not None else None
        )
    except (OSError, ssl.SSLError) as e:
        raise ConfigInvalid(
            f"TONGBAN_KAFKA_CA_FILE={str(settings.kafka_ca_file)!r} is not a readable PEM "
            f"CA bundle ({getattr(e, 'strerror', None) or e.args[-1]}); give the CA that "
            "signed the brokers' certificates."
        ) from e
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


Step = Callable[[], Awaitable[None]]


async def start_client(connection: KafkaConnection, start: Step, stop: Step) -> None:
    """Start a Kafka client (see ``start_or_close``). Raises KafkaSecurityFailed if TLS or
    the SASL login fails, BrokerUnavailable if the brokers cannot be reached."""
    try:
        await start_or_close(start, stop)
    # KeyError: aiokafka's SCRAM client reads the server's final message without checking
    # for the "e=" (error) form that a broker sends for an unknown user.
    except (KafkaError, OSError, TimeoutError, KeyError) as e:
        raise await diagnose(connection) from e


async def diagnose(connection: KafkaConnection) -> BrokerUnavailable:
    """Why clients cannot start against the first bootstrap server, as an error to raise:
    TCP first, then the TLS handshake, then the SASL login."""
    server = connection.bootstrap.split(",")[0]
    host, _, port_text = server.rpartition(":")
    host, port = host.strip("[]"), int(port_text)
    try:
        async with asyncio.timeout(_PROBE_SECONDS):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
    except (OSError, TimeoutError) as e:
        return BrokerUnavailable(
            f"Cannot reach Kafka at {server} ({_cause(e)}); check TONGBAN_KAFKA_BOOTSTRAP and "
            "that the brokers are running."
        )
    if connection.ssl_context is not None:
        failure = await _tls_failure(connection.ssl_context, host, port)
        if failure is not None:
            return KafkaSecurityFailed(f"TLS with Kafka at {server} failed: {failure}")
    if connection.sasl_mechanism is not None:
        failure = await _sasl_failure(connection, host, port)
        if failure is not None:
            return KafkaSecurityFailed(f"SASL login to Kafka at {server} failed: {failure}")
    return BrokerUnavailable(
        f"Kafka at {connection.describe()} accepts connections but its clients cannot start; "
        "check the brokers' logs, and TONGBAN_KAFKA_SECURITY_PROTOCOL against their "
        "listeners (one that requires a login closes connections that do not log in)."
    )


async def _tls_failure(context: ssl.SSLContext, host: str, port: int) -> str | None:
    try:
        async with asyncio.timeout(_PROBE_SECONDS):
            _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    except ssl.SSLCertVerificationError as e:
        return (
            f"its certificate does not verify ({e.verify_message}); check "
            "TONGBAN_KAFKA_CA_FILE and the host name in TONGBAN_KAFKA_BOOTSTRAP."
        )
    except ssl.SSLError as e:
        return (
            f"the handshake failed ({e.reason or _cause(e)}); check that the listener speaks "
            "TLS (TONGBAN_KAFKA_SECURITY_PROTOCOL)."
        )
    except (OSError, TimeoutError):
        return (
            "the listener accepted the connection but completed no TLS handshake, so it "
            "does not speak TLS; check TONGBAN_KAFKA_SECURITY_PROTOCOL against the "
            "brokers' listeners."
        )
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return None


async def _sasl_failure(connection: KafkaConnection, host: str, port: int) -> str | None:
    try:
        async with asyncio.timeout(_PROBE_SECONDS * 2):
            conn = await create_conn(
                host,
                port,
                client_id=connection.client_id,
                request_timeout_ms=int(_PROBE_SECONDS * 1000),
                ssl_context=connection.ssl_context,
                security_protocol=connection.security_protocol,
                sasl_mechanism=connection.sasl_mechanism,
                sasl_plain_username=connection.sasl_username,
                sasl_plain_password=connection.sasl_password,
            )
    except UnsupportedSaslMechanismError:
        return (
            f"the broker does not offer {connection.sasl_mechanism} on this listener; check "
            "TONGBAN_KAFKA_SASL_MECHANISM and the listener's SASL mechanisms."
        )
    except (KafkaError, KeyError, OSError, TimeoutError):
        return (
            f"the broker refused user {connection.sasl_username!r} "
            f"({connection.sasl_mechanism}); check TONGBAN_KAFKA_SASL_USERNAME and the "
            "password in TONGBAN_KAFKA_SASL_PASSWORD_FILE."
        )
    await close_detached(_closer(conn))
    return None


def _closer(conn: Any) -> Step:
    async def close() -> None:
        conn.close()

    return close


def _cause(error: BaseException) -> str:
    return getattr(error, "strerror", None) or type(error).__name__
