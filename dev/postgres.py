"""A throwaway PostgreSQL cluster on loopback, the metadata database of every Airflow the dev stack starts.

Airflow's scheduler relies on row locks (``SELECT ... FOR UPDATE SKIP LOCKED``) that SQLite does not have, and the
project ships PostgreSQL (docker-compose.yaml): the stack the tests run is the stack users deploy. The cluster is
made with the server binaries of Debian's ``postgresql`` package (``make postgres-deps`` installs them):
``initdb`` into a folder of the stack, then ``postgres`` itself as a child process in its own process group on a
free loopback port, TCP only (no Unix socket), password authentication. It is stopped through its pid and process
group (and its own processes, which leave that group, by pid), never by name. PostgreSQL refuses to run as root:
as root the server runs as the ``postgres`` system user (created by the Debian package); where that user cannot
reach the stack's folder (a private temporary folder), the data folder goes under /tmp and the stack's folder
links to it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from dev.azurite import free_port, port_open

#: Where Debian's ``postgresql-NN`` packages put the server binaries (not on PATH by default).
DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"
#: Overrides the search for the server binaries (a folder holding ``initdb`` and ``postgres``).
BINDIR_ENV = "SCORING_PG_BINDIR"
SERVICE_USER = "postgres"
DATABASE = "airflow"
SUPERUSER = "airflow"


def find_bindir() -> Path:
    """The folder with ``initdb`` and ``postgres``: $SCORING_PG_BINDIR, Debian's newest version, or PATH."""
    candidates: list[Path] = []
    if os.environ.get(BINDIR_ENV):
        candidates.append(Path(os.environ[BINDIR_ENV]))
    debian = sorted(
        glob.glob(DEBIAN_BINDIRS), key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0
    )
    candidates += [Path(p) for p in reversed(debian)]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise FileNotFoundError(
        "PostgreSQL server binaries (initdb, postgres) not found in $SCORING_PG_BINDIR, /usr/lib/postgresql/*/bin "
        "or on PATH: run `make postgres-deps` (apt-get install postgresql, needs root) or set SCORING_PG_BINDIR"
    )


class PostgresDied(RuntimeError):
    """The server exited while it was being started."""


class Postgres:
    """One PostgreSQL server: ``start()``, ``url`` (SQLAlchemy, psycopg2), ``stop()``; also a context manager.

    The cluster in ``location`` is created on first start and reused later (``make ui`` keeps its state); its
    password is kept beside it, readable only by its owner. ``durable=False`` turns off fsync and synchronous
    commit: right for a test cluster that is thrown away, wrong for anything kept.
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        port: int | None = None,
        *,
        durable: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        self.location = Path(location).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        """``location/data``; as root, where the ``postgres`` user cannot reach it, a folder under /tmp instead
        (``location/data`` then links to it), since the server runs as that user."""
        inside = self.location / "data"
        if os.geteuid() != 0 or inside.is_symlink() or self._reachable(self.location):
            return inside.resolve() if inside.is_symlink() else inside
        digest = hashlib.sha256(str(self.location).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"scoring-pg-{digest}" / "data"

    @property
    def log_path(self) -> Path:
        return self.location / "postgres.log"

    @property
    def password(self) -> str:
        return (self.location / "password").read_text().strip()

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Airflow uses (``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``); it holds the password."""
        return f"postgresql+psycopg2://{SUPERUSER}:{self.password}@{self.host}:{self.port}/{DATABASE}"

    def _run_as(self) -> dict[str, object]:
        """Popen arguments that drop root to the ``postgres`` user (PostgreSQL will not run as root)."""
        if os.geteuid() != 0:
            return {}
        try:
            user = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            raise RuntimeError(
                f"running as root, and there is no {SERVICE_USER!r} user to run PostgreSQL as: "
                "install Debian's postgresql package (make postgres-deps)"
            ) from None
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    @staticmethod
    def _reachable(folder: Path) -> bool:
        """Can the ``postgres`` user pass through ``folder`` and every folder above it?"""
        uid = pwd.getpwnam(SERVICE_USER).pw_uid
        for each in [folder, *folder.parents]:
            if not each.exists():
                continue
            mode = each.stat()
            if not (mode.st_mode & 0o001 or (mode.st_uid == uid and mode.st_mode & 0o100)):
                return False
        return True

    def initialise(self) -> None:
        """``initdb`` a new cluster (owner ``airflow``, a random password, scram-sha-256) unless one exists."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.location.mkdir(parents=True, exist_ok=True)
        run_as = self._run_as()
        if self.data_dir.parent != self.location:  # root, and the location is out of the server's reach
            self.data_dir.parent.mkdir(mode=0o711, exist_ok=True)
            (self.location / "data").symlink_to(self.data_dir)
        password_file = self.location / "password"
        password_file.write_text(secrets.token_urlsafe(24))
        password_file.chmod(0o600)
        if run_as:
            # the service user owns the cluster; the password file stays root's (it is read by this process)
            self.data_dir.mkdir(mode=0o700, exist_ok=True)
            os.chown(self.data_dir, run_as["user"], run_as["group"])  # type: ignore[arg-type]
            pw_for_initdb = self.data_dir.parent / "initdb-password"
            pw_for_initdb.write_text(self.password)
            os.chown(pw_for_initdb, run_as["user"], run_as["group"])  # type: ignore[arg-type]
            pw_for_initdb.chmod(0o600)
        else:
            pw_for_initdb = password_file
        try:
            done = subprocess.run(
                [
                    str(find_bindir() / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--pwfile",
                    str(pw_for_initdb),
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--no-instructions",
                ],
                capture_output=True,
                text=True,
                timeout=180,
                cwd=self.data_dir.parent,
                **run_as,
            )  # type: ignore[call-overload]
        finally:
            if pw_for_initdb != password_file:
                pw_for_initdb.unlink(missing_ok=True)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def start(self, timeout_s: float = 60) -> Postgres:
        """Start the server (initialising the cluster first if needed), create the database, wait until it answers."""
        self.initialise()
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": "",
            # the scheduler, DAG processor, triggerer, API server and the executor's workers each hold a pool
            "max_connections": "200",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        command = [str(find_bindir() / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir.parent,
                start_new_session=True,
                **self._run_as(),
            )  # type: ignore[call-overload]
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise PostgresDied(
                    f"postgres exited with {self.proc.returncode}; log ({self.log_path}):\n"
                    + "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
                )
            if port_open(self.host, self.port) and self._create_database():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"PostgreSQL did not answer on {self.host}:{self.port} within {timeout_s}s; see {self.log_path}"
                )
            time.sleep(0.2)

    def _create_database(self) -> bool:
        """Create the ``airflow`` database if missing; False while the server still refuses connections."""
        import psycopg2

        try:
            conn = psycopg2.connect(
                host=self.host,
                port=self.port,
                user=SUPERUSER,
                password=self.password,
                dbname="postgres",
                connect_timeout=5,
            )
        except psycopg2.OperationalError:  # starting up ("the database system is starting up")
            return False
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            conn.close()
        return True

    def query(self, sql: str, *args: object) -> list[tuple]:
        """Rows of one statement on the ``airflow`` database (tests read Airflow's tables with it)."""
        import psycopg2

        conn = psycopg2.connect(
            host=self.host, port=self.port, user=SUPERUSER, password=self.password, dbname=DATABASE, connect_timeout=10
        )
        try:
            with conn, conn.cursor() as cursor:
                cursor.execute(sql, args)
                return cursor.fetchall() if cursor.description else []
        finally:
            conn.close()

    def stop(self, timeout_s: float = 30) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, disconnect clients), SIGKILL if it lingers.

        The server's own processes (backends, checkpointer, ...) each call setsid(), so its process group does
        not reach them: they are collected first and any still running after the server has gone is killed by pid.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        import psutil

        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        _, alive = psutil.wait_procs(children, timeout=5)
        for child in alive:
            try:
                child.kill()
            except psutil.Error:
                pass

    def discard(self) -> None:
        """Stop the server and delete the cluster (a test cluster, at the end of its session)."""
        self.stop()
        data = self.data_dir
        if data.parent != self.location:
            shutil.rmtree(data.parent, ignore_errors=True)
        shutil.rmtree(self.location, ignore_errors=True)

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
