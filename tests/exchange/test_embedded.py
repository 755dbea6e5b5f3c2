"""The embedded PostgreSQL lifecycle: reuse across restarts, last user out stops it."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tongban.exchange.db.embedded import EmbeddedPostgres, temp_root
from tongban.exchange.errors import DataDirUnusable


@pytest.fixture
def root() -> Iterator[Path]:
    # Outside pytest's 0700 tmp root: as root, PostgreSQL runs as another user.
    path = temp_root("tongban-test-embedded-")
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


# -- directories above PGDATA keep their modes (issue 14, finding 11) -----------------

_AS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0, reason="as root only: PostgreSQL then runs as another user"
)


def _modes(path: Path) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in [path, *path.parents]}


def test_the_parents_of_the_data_dir_keep_their_modes(root: Path) -> None:
    data = root / "a" / "b"
    data.mkdir(parents=True)
    if os.geteuid() == 0:
        # Open to the server's user by group only: no o+x anywhere below the root.
        run_as = EmbeddedPostgres(data)._run_as()
        assert run_as.gid is not None
        for directory in (root / "a", data):
            os.chown(directory, 0, run_as.gid)
            directory.chmod(0o750)
    before = _modes(data)
    with EmbeddedPostgres(data) as pg:
        assert (pg.pgdata / "PG_VERSION").exists()
        assert _modes(data) == before
    assert _modes(data) == before


@_AS_ROOT
def test_a_parent_closed_to_the_server_user_is_refused_and_left_closed(root: Path) -> None:
    closed = root / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)  # whatever the umask
    pg = EmbeddedPostgres(closed / "data")
    with pytest.raises(DataDirUnusable) as refused:
        pg.start()
    message = refused.value.message
    assert f"may not pass through {closed} (mode 0700, owner root)" in message
    assert f"`chmod o+x {closed}`" in message
    assert "--data-dir" in message
    assert refused.value.reason == "DATA_DIR_UNUSABLE"
    assert stat.S_IMODE(closed.stat().st_mode) == 0o700
    assert pg.server_pid() is None
    pg.stop()  # nothing to leave

    # Opened for passing through, as the message says, the same data dir starts.
    closed.chmod(0o701)
    with EmbeddedPostgres(closed / "data") as started:
        assert (started.pgdata / "PG_VERSION").exists()
    assert stat.S_IMODE(closed.stat().st_mode) == 0o701
