"""The deployment files in ``docker/``, checked without a Docker engine: the compose file
against the Compose Specification's JSON schema (the copy vendored in check-jsonschema,
offline) and against what the nodes actually read; the Dockerfile with hadolint and with
the project's own rules; the example adapter's mapping with the adapter SDK's loader."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs; used for one validator
import pytest
import yaml

from tongban.adapters.mapping import load_mapping
from tongban.exchange.settings import Settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return document


def _nodes(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("command", ["serve"])[0] == "serve"
        and service.get("image", "").startswith("tongban-node")
    }


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendored.joinpath("compose-spec.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def test_compose_runs_several_nodes_of_one_exchange(compose: dict[str, Any]) -> None:
    services = compose["services"]
    nodes = _nodes(compose)
    assert len(nodes) >= 2
    known = {f"TONGBAN_{name.upper()}" for name in Settings.model_fields}
    names, shared = set(), set()
    for name, node in nodes.items():
        env = node["environment"]
        unknown = {k for k in env if k.startswith("TONGBAN_")} - known
        assert not unknown, f"{name}: settings the node does not read: {unknown}"
        names.add(env["TONGBAN_NODE_NAME"])
        shared.add(
            (env["TONGBAN_DATABASE_URL"], env["TONGBAN_KAFKA_BOOTSTRAP"], env["TONGBAN_LOG_ORIGIN"])
            if "TONGBAN_LOG_ORIGIN" in env
            else (env["TONGBAN_DATABASE_URL"], env["TONGBAN_KAFKA_BOOTSTRAP"])
        )
        assert "tongban-data:/var/lib/tongban" in node["volumes"]  # one data dir: one CA
        assert node["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert int(env["TONGBAN_SHUTDOWN_GRACE_SECONDS"]) < int(
            node["stop_grace_period"].removesuffix("s")
        )
    assert len(names) == len(nodes), "every node needs a name of its own"
    assert len(shared) == 1, "every node must share one database and one Kafka"

    # Every dependency, volume and bind mount named exists.
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"

    # No moving tags: every image names a version.
    for name, service in services.items():
        image = service["image"]
        _, _, tag = image.partition(":")
        assert re.search(r"\d", tag), f"{name}: pin {image} to a version"
        assert tag != "latest", f"{name}: pin {image} to a version"


def test_the_load_balancer_and_prometheus_reach_every_node(compose: dict[str, Any]) -> None:
    nodes = set(_nodes(compose))
    haproxy = (DOCKER / "haproxy.cfg").read_text()
    assert set(re.findall(r"^\s*server \S+ (\S+):50051\b", haproxy, re.MULTILINE)) == nodes
    assert re.search(r"^\s*mode tcp\b", haproxy, re.MULTILINE)  # TLS passes through
    assert "option httpchk GET /healthz" in haproxy
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "tongban"]
    assert job["metrics_path"] == "/metrics"
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"{node}:8080" for node in nodes}


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_keeps_the_projects_rules() -> None:
    lines = _instructions(DOCKERFILE.read_text())
    args = {m[1]: m[2] for m in (re.match(r"ARG (\w+)=(\S+)", line) for line in lines) if m}
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], line.split()[1]) for line in lines
             if line.startswith("FROM ")]  # fmt: skip
    assert bases
    for base in bases:  # a slim Python base pinned to a patch release, never `latest`
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    (healthcheck,) = [line for line in lines if line.startswith("HEALTHCHECK ")]
    assert "/healthz" in healthcheck
    for line in lines:
        assert not re.match(r"ADD\s+(--\S+\s+)*https?://", line), "fetch nothing with ADD"
    assert any(re.match(r"RUN .*pip install .*tongban-\*\.whl", line) for line in lines)
    assert lines[-2:] == ['ENTRYPOINT ["tongban"]', 'CMD ["serve"]']


def _instructions(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n(\s*#.*\n)*", " ", text)
    return [
        re.sub(r"\s+", " ", line.strip())
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_example_adapter_mapping_loads_and_matches_its_sample_export() -> None:
    mapping = load_mapping(DOCKER / "adapter" / "samr.yaml")
    assert mapping.exchange is not None
    assert mapping.exchange.endpoint == "exchange:50051"
    (stream,) = mapping.streams
    assert stream.dataset == "samr.enterprise"
    (sample,) = sorted((DOCKER / "adapter" / "exports").glob("qydj_*.csv"))
    with sample.open(encoding="utf-8", newline="") as f:
        header = next(csv.reader(f))
    columns = {field.column for field in stream.fields.values() if getattr(field, "column", None)}
    assert columns <= set(header)


# -- secrets by role (issue 14, finding 10) --------------------------------------------

NODE_UID = "10001"


def _tongban_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every service that runs the tongban image: nodes, init, migrate, adapters."""
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image", "").startswith("tongban-node")
    }


def _secret_names(service: dict[str, Any]) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}


def _properties(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    pairs = (line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def test_every_tongban_service_reads_only_settings_and_no_secret_from_the_environment(
    compose: dict[str, Any],
) -> None:
    known = {f"TONGBAN_{name.upper()}" for name in Settings.model_fields}
    for name, service in _tongban_services(compose).items():
        env = service.get("environment", {})
        unknown = {k for k in env if k.startswith("TONGBAN_")} - known
        assert not unknown, f"{name}: settings tongban does not read: {unknown}"
        for key, value in env.items():
            # Passwords and the passphrase come from files (compose secrets), never the
            # environment, where `docker inspect` and /proc show them.
            assert not re.search(r"PASSWORD$|PASSPHRASE$", key), f"{name}: {key} in the env"
            if key.endswith("DATABASE_URL"):
                user = value.split("://", 1)[1].split("@")[0]
                assert ":" not in user, f"{name}: {key} carries a password"
            if key.endswith("_FILE"):
                assert value.startswith("/run/secrets/"), f"{name}: {key} is not a secret"
                assert value.removeprefix("/run/secrets/") in _secret_names(service), (
                    f"{name}: {key} names a secret it is not given"
                )
    declared = compose["secrets"]
    for name, service in compose["services"].items():
        assert _secret_names(service) <= set(declared), f"{name} uses undeclared secrets"
    for name, secret in declared.items():
        # Secret files live in docker/secrets/, which git ignores.
        assert secret["file"].startswith("./secrets/"), f"secret {name} outside ./secrets/"
    assert "docker/secrets/" in (DOCKER.parent / ".gitignore").read_text().splitlines()


def test_the_adapter_gets_its_bundle_alone_read_only(compose: dict[str, Any]) -> None:
    adapter = compose["services"]["adapter-samr"]
    for volume in adapter.get("volumes", []):
        source, target = volume.split(":")[:2]
        assert source != "tongban-data", "the adapter must not mount the nodes' data volume"
        assert not f"{target}/".startswith("/var/lib/tongban/"), volume
        assert source.startswith(".") or source == "adapter-state", volume
    # Its department's bundle as a secret (read-only by nature), and no node secret.
    assert _secret_names(adapter) == {"samr_bundle"}
    assert compose["secrets"]["samr_bundle"]["file"] == "./secrets/bundles/samr"
    (bundle,) = adapter["secrets"]
    mapping = load_mapping(DOCKER / "adapter" / "samr.yaml")
    assert mapping.exchange is not None
    assert str(mapping.exchange.bundle) == f"/run/secrets/{bundle['target']}"
    # Not the nodes' user: it parses untrusted files.
    assert adapter["user"].split(":")[0] not in (NODE_UID, "0", "root")
    for name, node in _nodes(compose).items():
        assert "samr_bundle" not in _secret_names(node), name


def test_only_the_one_shots_hold_the_schema_owners_login(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    owners = {name for name, s in services.items() if "db_owner_password" in _secret_names(s)}
    # migrate, and the demo's enrolment: the department registry is written with the
    # owner's login, which the nodes' tongban_node lacks (migration 0021).
    assert owners == {"postgres", "migrate", "demo-departments"}
    migrating = {
        name
        for name, s in _tongban_services(compose).items()
        if any(k.startswith("TONGBAN_MIGRATION_") for k in s.get("environment", {}))
    }
    assert migrating == {"migrate", "demo-departments"}
    enrol = services["demo-departments"]
    assert enrol["command"] == ["dept", "add-demo"]
    assert enrol["restart"] == "no"
    assert not any(k.startswith("TONGBAN_DATABASE_") for k in enrol["environment"])
    assert (
        services["node-1"]["depends_on"]["demo-departments"]["condition"]
        == "service_completed_successfully"
    )
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert not migrate.get("volumes"), "migrating needs no data dir"
    owner = services["postgres"]["environment"]["POSTGRES_USER"]
    assert f"//{owner}@" in migrate["environment"]["TONGBAN_MIGRATION_DATABASE_URL"]
    for name, node in _nodes(compose).items():
        env = node["environment"]
        # The node role the migrations create (0003), with its own password.
        assert env["TONGBAN_DATABASE_URL"].startswith("postgresql://tongban_node@"), name
        assert "db_node_password" in _secret_names(node)
        assert node["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # migrate gives tongban_node the very password the nodes log in with.
    assert (
        migrate["environment"]["TONGBAN_DATABASE_URL"]
        == (services["node-1"]["environment"]["TONGBAN_DATABASE_URL"])
    )
    assert "db_node_password" in _secret_names(migrate)


def test_kafka_requires_sasl_ssl_and_gives_the_topics_to_the_nodes_alone(
    compose: dict[str, Any],
) -> None:
    kafka = compose["services"]["kafka"]
    assert "ports" not in kafka, "the broker is reached inside the compose network only"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in kafka["volumes"]}
    assert mounts["/etc/tongban-kafka/server.properties"] == "./kafka/server.properties"
    assert kafka["entrypoint"][-1] == "/etc/tongban-kafka/start.sh"
    assert mounts["/etc/tongban-kafka/start.sh"] == "./kafka/start.sh"
    config = _properties(DOCKER / "kafka" / "server.properties")
    protocols = dict(p.split(":") for p in config["listener.security.protocol.map"].split(","))
    controller = config["controller.listener.names"]
    for listener in config["listeners"].split(","):
        name, _, address = listener.partition("://")
        if name == controller:
            # Only the container itself reaches the controller listener.
            assert address.startswith("localhost:"), listener
        else:
            assert protocols[name] == "SASL_SSL", listener
    for listener in config["advertised.listeners"].split(","):
        assert protocols[listener.partition("://")[0]] == "SASL_SSL", listener
    assert protocols[config["inter.broker.listener.name"]] == "SASL_SSL"
    assert config["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert config["allow.everyone.if.no.acl.found"] == "false"
    assert config["authorizer.class.name"].endswith("StandardAuthorizer")
    # No password in the file: start.sh adds the broker's login from the secrets.
    assert not [key for key in config if "password" in key or "jaas" in key]

    acls = (DOCKER / "kafka" / "acls.sh").read_text(encoding="utf-8")
    principal = re.search(r"^principal=User:(\S+)$", acls, re.MULTILINE)
    prefix = re.search(r"^prefix=(\S+)$", acls, re.MULTILINE)
    assert principal
    assert prefix
    assert prefix[1] == Settings.model_fields["kafka_topic_prefix"].default
    assert re.search(r'--allow-principal "\$principal".*\n.*--topic "\$prefix" '
                     r"--resource-pattern-type prefixed", acls)  # fmt: skip
    assert acls.count("--allow-principal") == 1, "no one else is given anything"
    assert compose["services"]["kafka-acls"]["depends_on"]["kafka"]["condition"] == (
        "service_healthy"
    )
    for name, node in _nodes(compose).items():
        env = node["environment"]
        assert env["TONGBAN_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", name
        assert env["TONGBAN_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512", name
        assert env["TONGBAN_KAFKA_SASL_USERNAME"] == principal[1], name
        assert node["depends_on"]["kafka-acls"]["condition"] == "service_completed_successfully"
