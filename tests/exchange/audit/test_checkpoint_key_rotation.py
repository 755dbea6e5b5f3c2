"""`tongban key rotate checkpoint`: the log's checkpoint key changes while a node runs; the
change is a note signed by the old key; `audit verify` follows it from the first key, and
refuses a change the old key did not sign."""

from __future__ import annotations

import asyncpg
import pytest

from tests.cli_helpers import atongban, cli_env
from tests.conftest import client_for, enrol_demo
from tests.stories.restaurant import OWNER_ID
from tests.stories.test_sharing import _publish_story_data as publish_story_data
from tongban.exchange.audit.key_changes import KeyChangeInvalid, key_schedule, read_key_changes
from tongban.exchange.audit.note import open_checkpoint, parse_verifier_key
from tongban.exchange.audit.verify import LogCorrupt, verify_log
from tongban.exchange.datadir import first_log_verifier_key, key_passphrase, log_origin
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings
from tongban.signing import FixedClock, LocalSigner, SystemClock, generate_private_key


async def _cli(settings: Settings, *args: str) -> dict[str, object]:
    assert settings.database_url is not None
    done = await atongban(
        *args, "--data-dir", str(settings.data_dir), "--json",
        env=cli_env(
            TONGBAN_KEY_PASSPHRASE=key_passphrase(settings).decode(),
            TONGBAN_DATABASE_URL=settings.database_url.get_secret_value(),
        ),
    )  # fmt: skip
    assert done.code == 0, done.stdout + done.stderr
    result: dict[str, object] = done.json()
    return result


async def _some_entries(node: Node, *, first: bool = False) -> None:
    """A few logged accesses (queries are logged; listing the catalogue is not)."""
    if first:
        await publish_story_data(node)
    async with client_for(node, "police", "GA-1") as police:
        for i in range(3):
            await police.query(
                "police.person", [OWNER_ID], fields=["name"], purpose="核查", case_id=f"GA-{i}"
            )


async def test_rotation_while_the_node_runs(settings: Settings) -> None:
    origin = log_origin(settings)
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        await enrol_demo(settings)
        assert node.checkpointer is not None
        assert node.db is not None
        await _some_entries(node, first=True)
        first = node.checkpointer.public_key
        first_vkey = node.checkpointer.verifier_key
        before = await node.checkpointer.sign_now()
        rotated = await _cli(settings, "key", "rotate", "checkpoint")
        assert rotated["old_verifier_key"] == first_vkey
        # The running node picks the new key up at its next checkpoint.
        await _some_entries(node)
        after = await node.checkpointer.sign_now()
        assert after.size >= int(str(rotated["from_size"])) > before.size
        assert node.checkpointer.verifier_key == rotated["new_verifier_key"]
        _, new = parse_verifier_key(str(rotated["new_verifier_key"]))
        open_checkpoint(after.log_note, [(origin, new)], origin=origin)
        report = await verify_log(node.db.pool, origin=origin, verifier=first)
        assert report.key_changes == 1
        # Starting from the new key does not work: the change it would have to follow is
        # signed by the first key, which this verifier does not trust.
        with pytest.raises(LogCorrupt, match="not signed by the key it replaces"):
            await verify_log(node.db.pool, origin=origin, verifier=new)
    assert first_log_verifier_key(settings) == first_vkey
    # Repeating the command for the same upcoming key changes nothing; a second rotation
    # is another change, and `audit verify` follows both from the first key.
    again = await _cli(settings, "key", "rotate", "checkpoint")
    assert again["old_verifier_key"] == rotated["new_verifier_key"]
    verified = await _cli(settings, "audit", "verify")
    assert verified["key_changes"] == 2


async def test_a_change_not_signed_by_the_old_key_is_refused(
    settings: Settings, admin_dsn: str
) -> None:
    origin = log_origin(settings)
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        await enrol_demo(settings)
        assert node.checkpointer is not None
        assert node.db is not None
        first = node.checkpointer.public_key
        # An attacker with the database but not the key announces a key of their own.
        forger = LocalSigner(generate_private_key("Ed25519"))
        from tongban.exchange.audit.key_changes import announce
        from tongban.exchange.audit.note import verifier_key

        their_key = forger.public_key()
        vkey = verifier_key(origin, their_key)  # type: ignore[arg-type]
        note = announce(origin, 10_000, forger, vkey)
        assert settings.database_url is not None
        owner = await asyncpg.connect(settings.database_url.get_secret_value())
        try:
            await owner.execute(
                "INSERT INTO log_key_change VALUES (10000, $1, $2, now())", vkey, note
            )
        finally:
            await owner.close()
        with pytest.raises(KeyChangeInvalid, match="not signed by the key it replaces"):
            key_schedule(origin, first, await read_key_changes(node.db.pool))
        with pytest.raises(LogCorrupt, match="not signed by the key it replaces"):
            await verify_log(node.db.pool, origin=origin, verifier=first)
