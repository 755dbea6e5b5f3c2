"""``tongban peer``, as the operator runs it: add a peer from the root CA its operator sent,
list, suspend, activate, remove; bad input is refused with its reason."""

from __future__ import annotations

from pathlib import Path

from tests.cli_helpers import cli_env, tongban


def test_peer_add_list_suspend_remove(tmp_path: Path, database_url: str, admin_dsn: str) -> None:
    env = cli_env(TONGBAN_DATABASE_URL=database_url, TONGBAN_KEY_PASSPHRASE="cli test")
    county, province = tmp_path / "county", tmp_path / "province"

    def run(*args: str, data: Path = county) -> dict[str, object]:
        done = tongban(*args, "--data-dir", str(data), "--json", env=env)
        assert done.stdout, done.stderr
        result: dict[str, object] = done.json()
        return result

    for data in (county, province):
        assert tongban("init", "--data-dir", str(data), env=env).code == 0
    province_ca = tmp_path / "province-root.pem"
    province_ca.write_text(str(run("ca", "export", data=province)["certificate"]))

    added = run(
        "peer", "add", "province", "--ca", str(province_ca), "--endpoint",
        "127.0.0.1:50061", "--level", "province", "--parent",
    )  # fmt: skip
    peer = added["peer"]
    assert isinstance(peer, dict)
    assert (peer["name"], peer["level"], peer["parent"], peer["status"]) == (
        "province", "province", True, "active",
    )  # fmt: skip

    refusals = {
        "PEER_EXISTS": ("peer", "add", "again", "--ca", str(province_ca)),
        "PEER_IS_SELF": ("peer", "add", "me", "--ca", str(county / "ca" / "ca.crt")),
        "PEER_CA_INVALID": ("peer", "add", "bad", "--ca", str(tmp_path / "missing.pem")),
    }
    for reason, args in refusals.items():
        extra = ("--endpoint", "127.0.0.1:1", "--level", "city") if args[1] == "add" else ()
        done = run(*args, *extra)
        assert (done["ok"], done["reason"]) == (False, reason), done

    assert run("peer", "suspend", "province")["peer"]["status"] == "suspended"  # type: ignore[index]
    listed = run("peer", "list")["peers"]
    assert isinstance(listed, list)
    assert [(p["name"], p["status"]) for p in listed] == [("province", "suspended")]
    assert run("peer", "activate", "province")["peer"]["status"] == "active"  # type: ignore[index]
    assert run("peer", "remove", "province")["removed"] == "province"
    human = tongban("peer", "list", "--data-dir", str(county), env=env)
    assert human.code == 0
    assert "no peers configured" in human.stdout
