"""The ``tongban`` command line, run as a subprocess: outputs, exit codes, bad input."""

from __future__ import annotations

import json
import shutil
import socket
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.cli_helpers import TONGBAN, atongban, cli_env, tongban
from tongban.exchange.db.embedded import temp_root


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return cli_env(TONGBAN_DATABASE_URL=database_url, TONGBAN_KEY_PASSPHRASE="cli test")


def test_init_is_idempotent(tmp_path: Path, env: dict[str, str]) -> None:
    data = str(tmp_path / "d")
    first = tongban("init", "--data-dir", data, "--json", env=env)
    assert first.code == 0, first.stderr
    assert first.json()["created"] is True
    second = tongban("init", "--data-dir", data, "--json", env=env)
    assert second.code == 0
    assert second.json()["created"] is False
    assert second.json()["ca_fingerprint"] == first.json()["ca_fingerprint"]


def test_init_generates_a_private_passphrase_when_none_is_set(tmp_path: Path) -> None:
    data = tmp_path / "d"
    result = tongban("init", "--data-dir", str(data), env=cli_env())
    assert result.code == 0, result.stderr
    mode = stat.S_IMODE((data / "secrets" / "key-passphrase").stat().st_mode)
    assert mode == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in (data / "ca" / "ca.key").read_bytes()


def test_a_failed_init_can_be_run_again(tmp_path: Path, env: dict[str, str]) -> None:
    data = tmp_path / "d"
    # What an init killed half-way leaves: key material but no marker.
    (data / "ca").mkdir(parents=True)
    (data / "ca" / "ca.key").write_text("half written")
    (data / ".init-x").mkdir()
    result = tongban("init", "--data-dir", str(data), "--json", env=env)
    assert result.code == 0, result.stdout + result.stderr
    assert result.json()["created"] is True
    assert not (data / ".init-x").exists()


def test_dept_add_list_suspend_and_ca_export(tmp_path: Path, env: dict[str, str]) -> None:
    data = str(tmp_path / "d")
    assert tongban("init", "--data-dir", data, env=env).code == 0
    added = tongban(
        "dept",
        "add",
        "samr-city",
        "--name",
        "市市场监督管理局",
        "--level",
        "city",
        "--data-dir",
        data,
        "--json",
        env=env,
    )
    assert added.code == 0, added.stdout + added.stderr
    bundle = Path(added.json()["bundle"])
    assert {p.name for p in bundle.iterdir()} == {
        "bundle.json",
        "ca.crt",
        "tls.crt",
        "tls.key",
        "seal.crt",
        "seal.key",
    }
    assert stat.S_IMODE((bundle / "tls.key").stat().st_mode) == 0o600
    child = tongban(
        "dept",
        "add",
        "samr-county",
        "--name",
        "县市场监督管理局",
        "--level",
        "county",
        "--parent",
        "samr-city",
        "--data-dir",
        data,
        env=env,
    )
    assert child.code == 0, child.stderr
    assert "registered samr-county" in child.stdout

    listed = tongban("dept", "list", "--data-dir", data, "--json", env=env).json()
    assert [(d["code"], d["parent"]) for d in listed["departments"]] == [
        ("samr-city", None),
        ("samr-county", "samr-city"),
    ]
    human = tongban("dept", "list", "--data-dir", data, env=env)
    assert "县市场监督管理局" in human.stdout

    suspended = tongban("dept", "suspend", "samr-county", "--data-dir", data, "--json", env=env)
    assert suspended.json()["department"]["status"] == "suspended"

    pem = tongban("ca", "export", "--data-dir", data, env=env)
    assert pem.code == 0
    assert pem.stdout.startswith("-----BEGIN CERTIFICATE-----")
    assert (bundle / "ca.crt").read_text() == pem.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dept", "add", "x", "--name", "n", "--level", "galaxy"], "invalid choice"),
        (["dept", "add", "--name", "n", "--level", "county"], "required"),
        (["serve", "--grpc-listen", "nowhere"], "invalid address"),
        (["serve", "--http-listen", "127.0.0.1:70000"], "invalid address"),
        (["frobnicate"], "invalid choice"),
        (["dept"], "required"),
        (["init", "--data-dir", ""], "non-empty path"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = tongban(*args)
    assert result.code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_error_with_json_is_json() -> None:
    result = tongban("dept", "add", "x", "--name", "n", "--level", "galaxy", "--json")
    assert result.code == 2
    assert result.json()["reason"] == "USAGE"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["dept", "add", "Bad_Code", "--name", "n", "--level", "county"], "INVALID_ARGUMENT"),
        (["dept", "add", "ok-code", "--name", "\u202e", "--level", "county"], "INVALID_ARGUMENT"),
        (
            ["dept", "add", "ok-code", "--name", "n", "--level", "county", "--parent", "nope"],
            "DEPARTMENT_NOT_FOUND",
        ),
        (["dept", "suspend", "nobody"], "DEPARTMENT_NOT_FOUND"),
    ],
)
def test_bad_department_input_fails_cleanly(
    tmp_path: Path, env: dict[str, str], args: list[str], reason: str
) -> None:
    data = str(tmp_path / "d")
    assert tongban("init", "--data-dir", data, env=env).code == 0
    result = tongban(*args, "--data-dir", data, "--json", env=env)
    assert result.code == 1, result.stdout + result.stderr
    assert result.json()["reason"] == reason
    assert "Traceback" not in result.stderr
    # Nothing half-written: no bundle for a department that was refused.
    assert not (tmp_path / "d" / "bundles" / "ok-code").exists()
    listed = tongban("dept", "list", "--data-dir", data, "--json", env=env).json()
    assert listed["departments"] == []


def test_adding_a_department_twice_keeps_the_first_bundle(
    tmp_path: Path, env: dict[str, str]
) -> None:
    data = str(tmp_path / "d")
    assert tongban("init", "--data-dir", data, env=env).code == 0
    args = ["dept", "add", "tax", "--name", "县税务局", "--level", "county", "--data-dir", data]
    assert tongban(*args, env=env).code == 0
    key = (tmp_path / "d" / "bundles" / "tax" / "tls.key").read_bytes()
    again = tongban(*args, "--json", env=env)
    assert again.code == 1
    assert again.json()["reason"] == "DEPARTMENT_EXISTS"
    assert (tmp_path / "d" / "bundles" / "tax" / "tls.key").read_bytes() == key


def test_wrong_passphrase_is_a_clear_error(tmp_path: Path, env: dict[str, str]) -> None:
    data = str(tmp_path / "d")
    assert tongban("init", "--data-dir", data, env=env).code == 0
    wrong = dict(env, TONGBAN_KEY_PASSPHRASE="not it")
    result = tongban(
        "dept",
        "add",
        "tax",
        "--name",
        "n",
        "--level",
        "county",
        "--data-dir",
        data,
        "--json",
        env=wrong,
    )
    assert result.code == 1
    assert result.json()["reason"] == "KEY_PASSPHRASE_WRONG"
    assert tongban("init", "--data-dir", data, "--json", env=wrong).json()["reason"] == (
        "KEY_PASSPHRASE_WRONG"
    )


def test_commands_before_init_say_so(tmp_path: Path, env: dict[str, str]) -> None:
    result = tongban("ca", "export", "--data-dir", str(tmp_path / "none"), "--json", env=env)
    assert result.code == 1
    assert result.json()["reason"] == "NOT_INITIALISED"
    assert "tongban init" in result.json()["message"]


def test_unusable_data_dir(tmp_path: Path, env: dict[str, str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = tongban("init", "--data-dir", str(blocker / "sub"), "--json", env=env)
    assert result.code == 1
    assert result.json()["reason"] == "DATA_DIR_UNUSABLE"


def test_database_that_does_not_answer(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        env = cli_env(
            TONGBAN_DATABASE_URL=f"postgresql://tongban:secret@127.0.0.1:{port}/x",
            TONGBAN_KEY_PASSPHRASE="p",
        )
        data = str(tmp_path / "d")
        assert tongban("init", "--data-dir", data, env=env).code == 0
        result = tongban("dept", "list", "--data-dir", data, "--json", env=env)
    assert result.code == 1
    assert result.json()["reason"] == "DATABASE_UNAVAILABLE"
    assert "secret" not in result.stdout


def test_bad_environment_value(tmp_path: Path) -> None:
    result = tongban(
        "init", "--data-dir", str(tmp_path), "--json", env=cli_env(TONGBAN_GRPC_LISTEN="everywhere")
    )
    assert result.code == 1
    assert result.json()["reason"] == "CONFIG_INVALID"
    assert "TONGBAN_GRPC_LISTEN" in result.json()["message"]


def test_port_in_use(tmp_path: Path, env: dict[str, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for flag in ("--grpc-listen", "--http-listen"):
            other = "--http-listen" if flag == "--grpc-listen" else "--grpc-listen"
            result = tongban(
                "serve",
                "--data-dir",
                str(tmp_path / "d"),
                flag,
                f"127.0.0.1:{port}",
                other,
                "127.0.0.1:0",
                "--json",
                env=env,
            )
            assert result.code == 1, result.stdout + result.stderr
            assert result.json()["reason"] == "LISTEN_FAILED"
            assert str(port) in result.json()["message"]


def test_a_malformed_ca_certificate_in_the_data_dir(tmp_path: Path, env: dict[str, str]) -> None:
    data = tmp_path / "d"
    assert tongban("init", "--data-dir", str(data), env=env).code == 0
    (data / "ca" / "ca.crt").write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )
    result = tongban(
        "dept", "add", "tax", "--name", "县税务局", "--level", "county",
        "--data-dir", str(data), "--json", env=env,
    )  # fmt: skip
    assert result.code == 1
    assert result.json()["reason"] == "CERTIFICATE_INVALID"
    assert "Traceback" not in result.stdout + result.stderr
    assert not (data / "bundles" / "tax").exists()


def test_a_relative_data_dir_works_with_embedded_postgres() -> None:
    # Outside pytest's 0700 tmp root: as root, PostgreSQL runs as another user.
    root = temp_root("tongban-test-rel-")
    try:
        env = cli_env(TONGBAN_KEY_PASSPHRASE="cli test")
        assert (
            subprocess.run(
                [TONGBAN, "init", "--data-dir", "d"], cwd=root, env=env, capture_output=True
            ).returncode
            == 0
        )
        listed = subprocess.run(
            [TONGBAN, "dept", "list", "--data-dir", "d", "--json"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert json.loads(listed.stdout)["departments"] == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_closed_pipe_ends_quietly() -> None:
    """``tongban … | head``: the reader goes away; no traceback, exit 141 like Unix tools."""
    proc = subprocess.Popen(
        [TONGBAN, "licence", "types"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    assert proc.stdout is not None
    proc.stdout.close()  # before the command has written anything
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141
    assert b"Traceback" not in err


def test_the_key_passphrase_from_a_secret_file(tmp_path: Path, env: dict[str, str]) -> None:
    secret = tmp_path / "key-passphrase"
    secret.write_text("from a mounted secret\n", encoding="utf-8")
    from_file = {k: v for k, v in env.items() if k != "TONGBAN_KEY_PASSPHRASE"}
    from_file["TONGBAN_KEY_PASSPHRASE_FILE"] = str(secret)
    data = str(tmp_path / "d")
    assert tongban("init", "--data-dir", data, "--json", env=from_file).json()["created"] is True
    assert not (tmp_path / "d" / "secrets" / "key-passphrase").exists(), "none generated"
    # The keys are under the file's passphrase: the same value given directly opens them.
    direct = {**env, "TONGBAN_KEY_PASSPHRASE": "from a mounted secret"}
    assert tongban("init", "--data-dir", data, "--json", env=direct).json()["created"] is False
    assert tongban("init", "--data-dir", data, "--json", env=env).json()["reason"] == (
        "KEY_PASSPHRASE_WRONG"
    )
    missing = {**from_file, "TONGBAN_KEY_PASSPHRASE_FILE": str(tmp_path / "absent")}
    result = tongban("init", "--data-dir", str(tmp_path / "e"), "--json", env=missing)
    assert result.code == 1
    assert result.json()["reason"] == "DATA_DIR_UNUSABLE"
    assert "TONGBAN_KEY_PASSPHRASE_FILE" in result.json()["message"]
    assert not (tmp_path / "absent").exists(), "a named secret file is never generated"


async def test_a_read_only_database_fails_a_command_cleanly(
    tmp_path: Path, env: dict[str, str], database_url: str, admin_dsn: str
) -> None:
    """A command that writes, run while the database takes no writes (a standby, a
    failover under way), exits 1 with DATABASE_UNAVAILABLE / read_only and no trace, and
    leaves no bundle for the department it could not add."""
    data = str(tmp_path / "d")
    assert (await atongban("init", "--data-dir", data, env=env)).code == 0
    name = urlsplit(database_url).path.lstrip("/")
    args = ["dept", "add", "tax", "--name", "县税务局", "--level", "county"]
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
        result = await atongban(*args, "--data-dir", data, "--json", env=env)
        assert result.code == 1, result.stdout + result.stderr
        assert result.json()["reason"] == "DATABASE_UNAVAILABLE"
        assert result.json()["metadata"] == {"condition": "read_only", "sqlstate": "25006"}
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "d" / "bundles" / "tax").exists()
        plain = await atongban(*args, "--data-dir", data, env=env)
        assert plain.stderr.strip().startswith("tongban: The node's database takes no changes")
        assert plain.stderr.strip().endswith("[DATABASE_UNAVAILABLE]")
    finally:
        await admin.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
        await admin.close()
    assert (await atongban(*args, "--data-dir", data, env=env)).code == 0
