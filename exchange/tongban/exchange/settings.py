"""Node settings: one frozen object, read once at start from ``TONGBAN_*`` variables.

Command-line options override the environment. Every bad value is reported as one
sentence naming the variable, what was given and what is expected.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tongban.exchange.errors import ConfigInvalid, InvalidArgument
from tongban.exchange.sizes import parse_size

__all__ = ["ListenAddress", "Settings", "load_settings", "parse_listen_address"]

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


@dataclass(frozen=True)
class ListenAddress:
    """A TCP listen address. ``port`` 0 asks the system for a free port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen_address(text: str) -> ListenAddress:
    """Parse ``HOST:PORT`` (``[V6]:PORT`` for IPv6); raise ValueError with the reason."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError("expected [IPV6]:PORT")
        ipaddress.IPv6Address(host)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected HOST:PORT such as 127.0.0.1:50051")
        if not _HOSTNAME.match(host):
            ipaddress.IPv4Address(host)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("the port must be a number from 0 to 65535")
    return ListenAddress(host, int(port_text))


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Settings(BaseSettings):
    """Everything a node reads at start. Frozen: pass it down, never re-read it."""

    model_config = SettingsConfigDict(env_prefix="TONGBAN_", frozen=True, extra="forbid")

    data_dir: Path = Field(default=Path("var/tongban"))
    """Where the node keeps its CA, credentials, bundles and (embedded mode) PostgreSQL."""

    database_url: SecretStr | None = None
    """An external PostgreSQL (``postgresql://...``). Unset: embedded PostgreSQL in the data dir.
    Its user may be the schema's owner (the node then migrates at start and logs its pools
    in as ``tongban_node``) or ``tongban_node`` itself (migrations run separately, with
    ``tongban migrate``; the node never holds the owner's login)."""

    database_password_file: Path | None = None
    """A file holding the password of ``database_url``'s user (one line), used over any
    password in the URL, so that it need be neither in the URL nor in the environment."""

    migration_database_url: SecretStr | None = None
    """The schema owner's login that ``tongban migrate`` applies migrations with and that
    gives ``tongban_node`` its password. Unset: ``database_url``. Nodes never read it."""

    migration_database_password_file: Path | None = None
    """A file holding the password of ``migration_database_url``'s user (one line)."""

    grpc_listen: Annotated[ListenAddress, NoDecode] = ListenAddress("127.0.0.1", 50051)
    """The gRPC (mutual TLS) listen address."""

    http_listen: Annotated[ListenAddress, NoDecode] = ListenAddress("127.0.0.1", 8080)
    """The HTTP listen address for /healthz, /metrics and public verification."""

    public_url: str | None = None
    """The base URL verifiers reach this node's HTTP listener at (``https://tongban.example
    .gov.cn``); status list URIs in licences start with it. Unset:
    ``http://<first node hostname>:<HTTP port>``."""

    key_passphrase: SecretStr | None = None
    """Passphrase of the encrypted keys in the data dir. Unset: ``tongban init`` generates one
    into ``<data_dir>/secrets/key-passphrase`` (mode 0600); move it to a secret store in
    production and set this variable (or ``key_passphrase_file``) instead."""

    key_passphrase_file: Path | None = None
    """A file holding the key passphrase (a mounted secret), read where the generated
    ``<data_dir>/secrets/key-passphrase`` would be; ``key_passphrase`` wins if both are set."""

    node_name: str = "node-1"
    """This node's name, in its certificate's URI SAN and its log lines."""

    node_hostnames: Annotated[tuple[str, ...], NoDecode] = ("localhost",)
    """DNS names (comma-separated) written into the node's TLS certificate at ``init``."""

    node_ips: Annotated[tuple[str, ...], NoDecode] = ("127.0.0.1", "::1")
    """IP addresses (comma-separated) written into the node's TLS certificate at ``init``."""

    db_pool_size: int = Field(default=10, ge=1, le=200)
    """Connections in the node's PostgreSQL pool."""

    db_lock_wait_seconds: float = Field(default=10.0, gt=0, le=3_600)
    """A statement that waits this long for a lock another transaction holds (rows being
    changed, a table under maintenance) is stopped (PostgreSQL's ``lock_timeout``) and its
    call answered UNAVAILABLE / DATABASE_UNAVAILABLE, condition ``lock_timeout``: calls do
    not pile up behind one long transaction, each holding a pooled connection."""

    db_statement_seconds: float = Field(default=60.0, gt=0, le=86_400)
    """A statement that runs this long is stopped (``statement_timeout``) and its call
    answered UNAVAILABLE / DATABASE_UNAVAILABLE, condition ``statement_timeout``. The
    driver gives up 10 s later still, should the server not answer at all."""

    dept_max_concurrent_calls: int = Field(default=64, ge=1, le=100_000)
    """Calls one department may have in progress at once (unary and client-streaming);
    past it a call is refused RESOURCE_EXHAUSTED / RATE_LIMITED. A department's own limit
    in the registry (`tongban dept limits`) takes precedence."""

    dept_calls_per_second: float = Field(default=2000.0, gt=0, le=1_000_000)
    """Calls one department may start per second, sustained (bursts of one second's worth
    are allowed); past it a call is refused with a RetryInfo delay."""

    dept_max_subscriptions: int = Field(default=16, ge=0, le=100_000)
    """Open subscriptions (Subscribe, Export) one department may hold at once."""

    dept_max_stored_bytes: int = Field(default=20 * 1024**3, ge=0, le=2**63 - 1)
    """What one department's datasets may hold (bytes, or a size such as ``20GiB`` or
    ``500GB``): every record version written to them, keys and JSON, and 400 bytes each
    for its rows and index entries. A write that would take them past it is refused
    RESOURCE_EXHAUSTED / STORAGE_QUOTA_EXCEEDED and writes nothing, so one department's
    broken or hijacked adapter cannot fill the database's disk for every department. A
    department's own quota in the registry (`tongban dept limits CODE --stored SIZE`)
    takes precedence."""

    dept_max_pending_grants: int = Field(default=100, ge=1, le=100_000)
    """Grant requests one department may have awaiting one owner's answer at once; past
    it a request is refused RESOURCE_EXHAUSTED / TOO_MANY_PENDING_GRANTS until the owner
    answers or the consumer withdraws some, so no consumer can bury an owner's officers
    under requests."""

    grpc_idle_seconds: float = Field(default=300.0, gt=0, le=86_400)
    """A client connection with no call in progress for this long is closed (HTTP/2
    GOAWAY); gRPC clients connect again by themselves on their next call. Bounds what a
    client that opens a channel per call and never closes it holds on the node."""

    grpc_handshake_seconds: float = Field(default=10.0, gt=0, le=600)
    """A new connection must finish its TLS and HTTP/2 handshakes within this, or it is
    closed: a silent connection cannot hold a file descriptor for long (gRPC's own
    default is 120 s)."""

    http_idle_seconds: float = Field(default=60.0, gt=0, le=86_400)
    """An HTTP connection is closed when no request has come on it for this long, counted
    from its opening or its last answer; a request whose headers have not all arrived by
    then is dropped with it. (aiohttp's own default holds a silent connection an hour.)"""

    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=600)
    """How long in-flight calls may run after SIGTERM before they are cancelled."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    log_origin: str | None = None
    """The access log's origin (C2SP checkpoint origin and key name). Unset: derived from
    the exchange root CA, so all nodes of one exchange agree."""

    checkpoint_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    """How soon after the log grows a new checkpoint is signed."""

    witnesses: Annotated[tuple[str, ...], NoDecode] = ()
    """Witnesses the node asks to cosign each checkpoint (C2SP tlog-witness), comma-
    separated ``<witness key>@<URL>``: the key as ``tongban witness key`` prints it, the
    URL the witness's submission prefix, or ``peer:<name>`` for a peer exchange asked over
    the peer link. Empty (the default): checkpoints are not witnessed. See
    docs/audit-log.md, "Witnesses"."""

    witness_listen: Annotated[ListenAddress, NoDecode] = ListenAddress("127.0.0.1", 8090)
    """Where ``tongban witness serve`` listens (HTTP; put TLS in front of it)."""

    witness_logs: Annotated[tuple[str, ...], NoDecode] = ()
    """The logs ``tongban witness serve`` witnesses, comma-separated verifier keys (as
    ``tongban audit key`` prints a log's); ``--log`` adds more."""

    grant_answer_days: int = Field(default=5, ge=1, le=60)
    """Working days an owner has to answer a grant request (政务数据共享条例: 5 by default)."""

    working_utc_offset_hours: int = Field(default=8, ge=-12, le=14)
    """The offices' time zone as hours from UTC (8: China Standard Time, no daylight saving);
    a working day ends at midnight there."""

    holidays: Annotated[tuple[date, ...], NoDecode] = ()
    """Public holidays (comma-separated YYYY-MM-DD) that are not working days."""

    makeup_workdays: Annotated[tuple[date, ...], NoDecode] = ()
    """Weekend days that are working days (调休), comma-separated YYYY-MM-DD."""

    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The event loop ``tongban serve`` runs on: uvloop (libuv, the default), or the
    standard library's. uvloop took 900-957 us of the node's CPU per audited query against
    971-1,022 us on asyncio's loop (~6% less; alternating runs, bench: its loop and its
    sockets to PostgreSQL); ``asyncio`` is the fallback should a platform or a library not
    get on with it. Read before the loop starts (``tongban.cli.main``)."""

    reuse_port: bool = False
    """Share the gRPC and HTTP ports with the other node processes of this host
    (SO_REUSEPORT): set by ``tongban serve --workers N`` for its workers."""

    case_notify: str = ""
    """Where notices of case transitions go, for the applicant (docs/notifiers.md):
    ``file:/abs/path.jsonl`` (one JSON line each) or ``webhook:https://host/path`` (POSTed,
    signed with ``<data_dir>/secrets/case-notify.key``; http only to loopback). Empty (the
    default): none are sent. A bad value stops the node at start."""

    covert_max_days: int = Field(default=365, ge=1, le=1826)
    """The longest embargo one covert-case declaration may set, in days from the moment
    it is made (at most 1826, five years); declaring the case again extends it, and each
    declaration is in the access log."""

    status_list_ttl_seconds: int = Field(default=300, ge=1, le=86_400)
    """The ``ttl`` this exchange signs its licence status lists with, and the ``max-age``
    its ``/status-lists/<id>`` answers carry: how long a verifier may use a list before
    fetching it again, so how late a revocation may be seen (peer exchanges use it, to
    at most 300 s). 1 to 86400 (a day, the lifetime of a status list token)."""

    peer_sync_seconds: float = Field(default=60.0, ge=1, le=86_400)
    """How often each node pulls each active peer exchange's catalogue offer; a peer's
    notice of a change pulls it at once (docs/federation.md)."""

    peer_call_seconds: float = Field(default=5.0, gt=0, le=120)
    """Deadline of a call to a peer exchange; past it (or when the peer is down) the call
    fails with PEER_UNAVAILABLE."""

    peer_request_seconds: float = Field(default=60.0, ge=5, le=3600)
    """Lifetime of a forwarded request a node signs for a peer, and how long the peer
    keeps its nonce to refuse a replay."""

    peer_max_hops: int = Field(default=3, ge=1, le=8)
    """The most links between exchanges a routed query may cross, counted from the
    department's exchange to the owner's (a direct peer is 1). A node carries, answers and
    re-offers nothing beyond it; 1 makes this exchange relay nothing (docs/federation.md,
    "Routing over several hops")."""

    kafka_bootstrap: str | None = None
    """Kafka bootstrap servers (``host:port``, comma-separated). Set: change events are
    relayed from the outbox to Kafka and subscribers are fed from Kafka. Unset (the
    default): subscribers are fed from PostgreSQL alone."""

    kafka_idempotence: bool = True
    """Use Kafka's idempotent producer. Keep it on for Apache Kafka; turn it off only for
    brokers without ``InitProducerId`` (the Tansu test broker). Subscribers deduplicate by
    position and event id either way."""

    kafka_topic_prefix: str = "tongban.events."
    """Topic of a dataset's events: this prefix + the dataset code."""

    kafka_partitions: int = Field(default=3, ge=1, le=1000)
    """Partitions of a topic the node creates (events are keyed by subject key, so one
    subject's events stay in order)."""

    kafka_replication: int = Field(default=1, ge=1, le=10)
    """Replication factor of a topic the node creates (3 for a production cluster)."""

    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How the node's Kafka clients talk to the brokers: ``SASL_SSL`` (TLS, and a SASL
    login) in production; ``PLAINTEXT`` only inside a closed test network."""

    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] = "SCRAM-SHA-512"
    """The SASL mechanism (``SASL_PLAINTEXT``/``SASL_SSL``). ``PLAIN`` sends the password
    itself, so it is accepted over ``SASL_SSL`` only."""

    kafka_sasl_username: str | None = None
    """The node's SASL user (its Kafka principal, which the topic ACLs name)."""

    kafka_sasl_password_file: Path | None = None
    """A file holding the SASL password (read at start; one line). The password is never
    taken from the environment itself."""

    kafka_ca_file: Path | None = None
    """PEM CA bundle the brokers' TLS certificates must chain to (``SSL``/``SASL_SSL``).
    Unset: the system's trusted CAs."""

    @field_validator("grpc_listen", "http_listen", "witness_listen", mode="before")
    @classmethod
    def _listen(cls, value: Any) -> Any:
        return parse_listen_address(value) if isinstance(value, str) else value

    @field_validator("dept_max_stored_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return parse_size(value)
        except InvalidArgument as e:
            raise ValueError(e.message) from None

    @field_validator(
        "node_hostnames",
        "node_ips",
        "holidays",
        "makeup_workdays",
        "witnesses",
        "witness_logs",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("node_hostnames")
    @classmethod
    def _hostnames(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _HOSTNAME.match(name):
                raise ValueError(f"{name!r} is not a DNS name")
        return value

    @field_validator("node_ips")
    @classmethod
    def _ips(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for ip in value:
            ipaddress.ip_address(ip)
        return value

    @field_validator("witnesses")
    @classmethod
    def _witnesses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from tongban.exchange.witness.collector import parse_witness_endpoints

        parse_witness_endpoints(value)
        return value

    @field_validator("witness_logs")
    @classmethod
    def _witness_logs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from tongban.exchange.audit.note import NoteInvalid, parse_verifier_key

        for text in value:
            try:
                parse_verifier_key(text)
            except NoteInvalid as e:
                raise ValueError(f"{text[:80]!r}: {e.message}") from None
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        for server in value.split(","):
            parse_listen_address(server)
        return ",".join(part.strip() for part in value.split(","))

    @field_validator("kafka_sasl_username")
    @classmethod
    def _sasl_username(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not re.fullmatch(r"[!-~]{1,255}", value.strip()):
            raise ValueError("use 1-255 printable ASCII characters without spaces")
        return value.strip()

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        """Refuse combinations that would run with less protection than the operator
        asked for (credentials or a CA that the chosen protocol would ignore)."""
        protocol = self.kafka_security_protocol
        setting = "TONGBAN_KAFKA_SECURITY_PROTOCOL"
        if protocol.startswith("SASL_"):
            for name, value in (
                ("kafka_sasl_username", self.kafka_sasl_username),
                ("kafka_sasl_password_file", self.kafka_sasl_password_file),
            ):
                if value is None:
                    raise ValueError(
                        f"TONGBAN_{name.upper()} is not set: {setting}={protocol} logs in to "
                        "Kafka with SASL and needs a user and a password file"
                    )
            if protocol == "SASL_PLAINTEXT" and self.kafka_sasl_mechanism == "PLAIN":
                raise ValueError(
                    "TONGBAN_KAFKA_SASL_MECHANISM=PLAIN would send the Kafka password in clear "
                    f"over {setting}=SASL_PLAINTEXT; use SASL_SSL or a SCRAM mechanism"
                )
        else:
            for name, value in (
                ("kafka_sasl_username", self.kafka_sasl_username),
                ("kafka_sasl_password_file", self.kafka_sasl_password_file),
            ):
                if value is not None:
                    raise ValueError(
                        f"TONGBAN_{name.upper()} is set but {setting}={protocol} does not log "
                        "in with SASL; set SASL_SSL or unset it"
                    )
        if self.kafka_ca_file is not None and not protocol.endswith("SSL"):
            raise ValueError(
                f"TONGBAN_KAFKA_CA_FILE is set but {setting}={protocol} does not use TLS; set "
                "SSL or SASL_SSL or unset it"
            )
        return self

    @field_validator("kafka_topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]{0,100}", value):
            raise ValueError("use letters, digits, '.', '_' and '-' (Kafka topic characters)")
        return value

    @field_validator("log_origin")
    @classmethod
    def _origin(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[!-*,-~]{1,200}", value):
            raise ValueError("use 1-200 printable ASCII characters without spaces or '+'")
        return value

    @field_validator("node_name")
    @classmethod
    def _node_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", value):
            raise ValueError("use lowercase letters, digits and '-', at most 63 characters")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        # As the trust list's status-list base URLs allow them (a host, no user info, no
        # "." or ".." or empty path segments): the node names <public URL>/status-lists/.
        host = r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
        path = r"(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*/?"
        if not re.fullmatch(rf"https?://{host}{path}", value.strip()):
            raise ValueError("expected a URL such as https://tongban.example.gov.cn")
        return value.strip().rstrip("/")

    @field_validator("database_url", "migration_database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("expected a URL starting with postgresql://")
        return value

    @property
    def passphrase_file(self) -> Path:
        return self.key_passphrase_file or self.data_dir / "secrets" / "key-passphrase"


def load_settings(**overrides: Any) -> Settings:
    """Read the environment, apply non-None ``overrides``, and validate.

    Raises ConfigInvalid with one sentence per bad value.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as e:
        raise ConfigInvalid(_describe(e, given)) from None


def _describe(error: ValidationError, given: dict[str, Any]) -> str:
    sentences = []
    for item in error.errors(include_url=False):
        if not item["loc"]:  # a check across settings: its message names them
            sentences.append(str(item["msg"]).removeprefix("Value error, ") + ".")
            continue
        field = str(item["loc"][0])
        source = f"--{field.replace('_', '-')}" if field in given else f"TONGBAN_{field.upper()}"
        reason = str(item["msg"]).removeprefix("Value error, ")
        value = item.get("input")
        shown = "" if "passphrase" in field or "url" in field else f"={value!r}"
        sentences.append(f"{source}{shown}: {reason}.")
    return " ".join(sentences)
