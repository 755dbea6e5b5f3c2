"""The embedded PostgreSQL lifecycle: reuse across restarts, last user out stops it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tongban.exchange.db.embedded import EmbeddedPostgres


@pytest.fixture
def root() -> Iterator[Path]:
    # Outside pytest's 0700 tmp root: as root, PostgreSQL runs as another user.
    path = Path(tempfile.mkdtemp(prefix="tongban-test-embedded-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_last_user_out_stops_the_server(root: Path) -> None:
    first = EmbeddedPostgres(root)
    second = EmbeddedPostgres(root)
    first.start()
    pid = first.server_pid()
    assert _alive(pid)
    second.start()
    assert second.server_pid() == pid, "the second user joins the running server"
    first.stop()
    assert _alive(pid), "another user still holds it"
    second.stop()
    assert not _alive(pid)
    second.stop()  # idempotent


def test_restart_reuses_the_data(root: Path) -> None:
    with EmbeddedPostgres(root) as pg:
        assert (pg.pgdata / "PG_VERSION").exists()
        first_dsn = pg.dsn()
    with EmbeddedPostgres(root) as pg:
        assert pg.dsn() == first_dsn


def test_a_half_initialised_pgdata_is_redone(root: Path) -> None:
    (root / "pg").mkdir()
    (root / "pg" / "junk").write_text("left by an initdb that died")
    with EmbeddedPostgres(root) as pg:
        assert (pg.pgdata / "PG_VERSION").exists()
        assert not (pg.pgdata / "junk").exists()


def test_long_paths_get_a_short_socket_dir(root: Path) -> None:
    deep = root / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    with EmbeddedPostgres(deep) as pg:
        assert "host=/" in pg.dsn()
        assert str(deep) not in pg.dsn()
        socket_dir = Path(pg.dsn().split("host=", 1)[1])
        # A fresh private directory (mkdtemp), not a name someone could have made first.
        assert socket_dir.name.startswith("tongban-pg-")
        assert not socket_dir.is_symlink()
        assert socket_dir.stat().st_mode & 0o077 == 0
    assert not socket_dir.exists(), "removed when the server stops"


def test_a_planted_socket_dir_is_not_used(root: Path) -> None:
    import hashlib
    import tempfile

    deep = root / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    # What the old, predictable name would have been: a symlink planted there is ignored.
    digest = hashlib.sha256(str((deep / "pg").resolve()).encode()).hexdigest()[:16]
    planted = Path(tempfile.gettempdir()) / f"tongban-pg-{digest}"
    target = root / "elsewhere"
    target.mkdir()
    planted.symlink_to(target)
    try:
        with EmbeddedPostgres(deep) as pg:
            assert str(planted) not in pg.dsn()
        assert list(target.iterdir()) == []
    finally:
        planted.unlink()


def test_start_twice_is_a_programming_error(root: Path) -> None:
    with EmbeddedPostgres(root) as pg, pytest.raises(RuntimeError, match="twice"):
        pg.start()
