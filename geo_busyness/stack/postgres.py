"""A throw-away PostgreSQL server on loopback, for the tests of the production Dagster instance.

:class:`PostgresServer` runs ``initdb`` and ``pg_ctl`` from the machine's PostgreSQL server
package (found on ``PATH`` or in Debian's ``/usr/lib/postgresql/<version>/bin``) on a fresh
cluster in a temporary directory, listening only on 127.0.0.1 on a free port (its Unix socket
stays in that directory), with password (SCRAM) authentication over TCP, and creates one
database::

    with PostgresServer() as server:
        os.environ.update(server.env())   # DAGSTER_PG_* for deploy/instance/dagster.yaml
        with server.connect() as conn: ...

PostgreSQL refuses to run as root, so as root every server command runs as the ``postgres``
system user (created by Debian's ``postgresql`` package) through ``runuser``. The cluster is
tuned for throw-away use (no fsync): never point it at data to keep. Unlike :class:`SeaweedFS`
the server cannot die with its parent (``pg_ctl`` daemonizes it and the kernel drops the
parent-death signal on the switch of user), so stop it: ``with``, :meth:`stop` or at exit.
"""

from __future__ import annotations

import atexit
import glob
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from geo_busyness.stack.services import LOOPBACK, free_port

SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
# What deploy/instance/dagster.yaml reads its connection from.
DAGSTER_PG_ENV = {
    "username": "DAGSTER_PG_USERNAME",
    "password": "DAGSTER_PG_PASSWORD",
    "hostname": "DAGSTER_PG_HOST",
    "db_name": "DAGSTER_PG_DB",
    "port": "DAGSTER_PG_PORT",
}


class PostgresError(RuntimeError):
    """The PostgreSQL server could not be set up, started or reached."""


class PostgresNotFound(PostgresError):
    """No PostgreSQL server binaries (``initdb``, ``pg_ctl``, ``postgres``) on this machine."""


def _version_key(bin_dir: str) -> tuple[int, ...]:
    version = Path(bin_dir).parent.name
    return tuple(int(part) for part in re.findall(r"\d+", version))


def find_postgres_bin() -> Path:
    """Directory holding ``initdb``, ``pg_ctl`` and ``postgres`` of one PostgreSQL version:
    the one ``initdb`` on ``PATH`` comes from, else Debian's newest ``/usr/lib/postgresql/*``."""
    candidates = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += [Path(d) for d in sorted(glob.glob(DEBIAN_BIN_GLOB), key=_version_key)[::-1]]
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in SERVER_BINARIES):
            return directory
    raise PostgresNotFound(
        f"PostgreSQL server binaries ({', '.join(SERVER_BINARIES)}) not found on PATH nor in "
        f"{DEBIAN_BIN_GLOB}; install the server (Debian: `apt-get install postgresql`)"
    )


class PostgresServer:
    """One PostgreSQL cluster on 127.0.0.1 in a temporary directory; a context manager.

    ``user`` / ``password`` (random when omitted): the superuser clients log in as over TCP.
    ``db_name``: the database created at start (more with :meth:`create_database`).
    ``port``: fixed port (a free one when omitted; a clash then retries another).
    ``os_user``: the system user the server runs as when this process is root.
    """

    def __init__(
        self,
        *,
        user: str = "dagster",
        password: str | None = None,
        db_name: str = "dagster",
        port: int | None = None,
        os_user: str = "postgres",
        startup_timeout: float = 30.0,
        bin_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.user = user
        self.password = password or secrets.token_urlsafe(16)
        self.db_name = db_name
        self.os_user = os_user
        self.startup_timeout = startup_timeout
        self._fixed_port = port
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self._base_dir: Path | None = None
        self._port: int | None = None
        self._started = False

    # ----------------------------------------------------------------- addresses & clients
    @property
    def base_dir(self) -> Path:
        if self._base_dir is None:
            raise PostgresError("PostgreSQL is not started")
        return self._base_dir

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        if self._port is None:
            raise PostgresError("PostgreSQL is not started")
        return self._port

    def env(self, db_name: str | None = None) -> dict[str, str]:
        """``DAGSTER_PG_*`` variables for ``deploy/instance/dagster.yaml`` (``db_name`` or the
        server's database)."""
        values = {
            "username": self.user,
            "password": self.password,
            "hostname": self.host,
            "db_name": db_name or self.db_name,
            "port": str(self.port),
        }
        return {DAGSTER_PG_ENV[field]: value for field, value in values.items()}

    def connect(self, db_name: str | None = None, **options: Any):
        """A psycopg2 connection over TCP with the password (what Dagster's storage does)."""
        import psycopg2

        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=db_name or self.db_name,
            connect_timeout=5,
            **options,
        )

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return it (CREATE DATABASE needs autocommit)."""
        from psycopg2 import sql

        conn = self.connect("postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        return name

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, PostgresError):
            return "<no server log>"

    # ----------------------------------------------------------------- lifecycle
    def _as_server_user(self, command: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return command
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PostgresError("running as root needs `runuser` (util-linux) to drop to a user")
        return [runuser, "-u", self.os_user, "--", *command]

    def _run(self, command: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self._as_server_user(command),
            cwd=self.base_dir,  # the server user may not be allowed into our working directory
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C"},
        )
        if check and result.returncode != 0:
            raise PostgresError(
                f"`{' '.join(command)}` failed with code {result.returncode}:\n"
                f"{(result.stdout + result.stderr).strip()}\nserver log {self.log_path}:\n"
                f"{self.log_tail()}"
            )
        return result

    def _pg_ctl(self, *arguments: str) -> list[str]:
        assert self._bin_dir is not None
        return [str(self._bin_dir / "pg_ctl"), "-D", str(self.data_dir), *arguments]

    def _make_base_dir(self) -> None:
        """A private directory the server user owns (not under pytest's root-only tmp dirs)."""
        self._base_dir = Path(tempfile.mkdtemp(prefix="postgres-"))
        if os.geteuid() == 0:
            import pwd

            try:
                account = pwd.getpwnam(self.os_user)
            except KeyError:
                raise PostgresError(
                    f"running as root, but there is no system user {self.os_user!r} to run "
                    "PostgreSQL as (Debian's postgresql package creates `postgres`)"
                ) from None
            os.chown(self._base_dir, account.pw_uid, account.pw_gid)

    def _initdb(self) -> None:
        password_file = self.base_dir / "password"
        password_file.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(password_file, user=self.os_user)
        try:
            self._run(
                [
                    str(self._bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.user,
                    f"--pwfile={password_file}",
                    "--auth-local=trust",  # the Unix socket is in our private directory
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            )
        finally:
            password_file.unlink(missing_ok=True)

    def _server_options(self, port: int) -> str:
        return " ".join(
            [
                "-c listen_addresses=" + LOOPBACK,
                f"-p {port}",
                f"-c unix_socket_directories={self.base_dir}",
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            ]
        )

    def start(self) -> PostgresServer:
        """initdb, start (``pg_ctl -w``: returns once connections are accepted), create the
        database; a port taken between picking and binding retries another free port."""
        if self._started:
            return self
        self._bin_dir = self._bin_dir or find_postgres_bin()
        self._make_base_dir()
        atexit.register(self.stop)
        try:
            self._initdb()
            for attempt in range(3):
                self._port = self._fixed_port or free_port()
                started = self._run(
                    self._pg_ctl(
                        "-l",
                        str(self.log_path),
                        "-w",
                        "-t",
                        str(int(self.startup_timeout)),
                        "-o",
                        self._server_options(self._port),
                        "start",
                    ),
                    check=False,
                )
                if started.returncode == 0:
                    self._started = True
                    break
                clash = "address already in use" in self.log_tail().lower()
                if not clash or self._fixed_port or attempt == 2:
                    raise PostgresError(
                        f"PostgreSQL did not start on {LOOPBACK}:{self._port} "
                        f"({(started.stdout + started.stderr).strip()}); server log "
                        f"{self.log_path}:\n{self.log_tail()}"
                    )
            self.create_database(self.db_name)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """``pg_ctl stop -m fast`` (``immediate`` if that fails), then remove the directory."""
        atexit.unregister(self.stop)
        if self._base_dir is None:
            return
        if self._started and (self.data_dir / "postmaster.pid").exists():
            stopped = self._run(self._pg_ctl("-m", "fast", "-w", "-t", "30", "stop"), check=False)
            if stopped.returncode != 0:
                self._run(self._pg_ctl("-m", "immediate", "-w", "stop"), check=False)
        self._started = False
        shutil.rmtree(self._base_dir, ignore_errors=True)
        self._base_dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running on {LOOPBACK}:{self._port}" if self._started else "stopped"
        return f"<PostgresServer {state}>"
