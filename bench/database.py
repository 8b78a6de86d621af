"""The PostgreSQL server under test: a throwaway embedded one, or `--database-url`; fresh databases on it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from app.config import asyncpg_dsn
from app.embedded import EmbeddedDatabase
from bench.cpu import local_postmaster

SETTINGS = (
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "full_page_writes",
    "commit_delay",
    "shared_buffers",
    "max_connections",
    "data_directory",
)


def with_database(url: str, name: str) -> str:
    """The same server URL naming another database."""
    parts = urlsplit(asyncpg_dsn(url))
    return urlunsplit(parts._replace(path="/" + name))


def database_name(url: str) -> str:
    """The database a URL names."""
    return urlsplit(url).path.lstrip("/")


async def _execute(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _log_head(url: str) -> int:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return int(await connection.fetchval("SELECT position FROM log_head"))
    finally:
        await connection.close()


def log_head(url: str) -> int:
    """The log's head position: its number of events (positions are dense)."""
    return asyncio.run(_log_head(url))


def analyze(url: str) -> None:
    """ANALYZE every table of the database at `url`."""
    asyncio.run(_execute(url, "ANALYZE"))


def vacuum_analyze(url: str) -> None:
    """VACUUM (ANALYZE) every table of the database at `url`."""
    asyncio.run(_execute(url, "VACUUM (ANALYZE)"))


class DatabaseServer:
    """Starts the embedded server when no URL is given; creates and drops the bench's databases."""

    def __init__(self, url: str | None) -> None:
        self._given = url
        self._embedded: EmbeddedDatabase | None = None
        self._directory: Path | None = None
        self._created: list[str] = []
        self.admin_url = ""

    @property
    def embedded(self) -> bool:
        """True when the server is the throwaway embedded one."""
        return self._given is None

    def start(self) -> str:
        """Start (or just check) the server; returns the admin URL."""
        if self._given is not None:
            self.admin_url = asyncpg_dsn(self._given)
        else:
            self._directory = Path(tempfile.mkdtemp(prefix="profile-audit-bench-"))
            self._embedded = EmbeddedDatabase(self._directory, delete_on_stop=True)
            self._embedded.start()
            self.admin_url = self._embedded.url("postgres")
        asyncio.run(_execute(self.admin_url, "SELECT 1"))
        return self.admin_url

    def create(self, name: str) -> str:
        """A fresh, empty database `name`; returns its URL."""
        quoted = f'"{name}"'
        asyncio.run(
            _execute(self.admin_url, f"DROP DATABASE IF EXISTS {quoted}", f"CREATE DATABASE {quoted}")
        )
        self._created.append(name)
        return with_database(self.admin_url, name)

    def drop(self, url: str) -> None:
        """Drop a database made by `create` (by its URL) to free its disk space now."""
        name = database_name(url)
        asyncio.run(_execute(self.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if name in self._created:
            self._created.remove(name)

    def analyze(self, url: str) -> None:
        """ANALYZE one database (what autovacuum does within about a minute of a busy start)."""
        analyze(url)

    def checkpoint(self) -> None:
        """CHECKPOINT, so that each target starts without the previous one's dirty pages (when allowed)."""
        with contextlib.suppress(asyncpg.PostgresError):
            asyncio.run(_execute(self.admin_url, "CHECKPOINT"))

    def stop(self, *, keep: bool = False) -> None:
        """Drop the databases made here (unless `keep`), and stop the embedded server."""
        if self._embedded is not None:
            self._embedded.stop()  # deletes pgdata
            self._embedded = None
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
            return
        if keep or not self._created:
            return
        drops = [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in self._created]
        asyncio.run(_execute(self.admin_url, *drops))
        self._created.clear()


async def _facts(url: str) -> dict[str, Any]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        facts: dict[str, Any] = {"version": await connection.fetchval("SELECT version()")}
        for name in SETTINGS:
            try:
                facts[name] = await connection.fetchval("SELECT current_setting($1, true)", name)
            except asyncpg.PostgresError:  # e.g. data_directory needs pg_read_all_settings
                facts[name] = None
        backend_pid = await connection.fetchval("SELECT pg_backend_pid()")
        facts["postmaster_pid"] = local_postmaster(backend_pid, facts.get("data_directory"))
        return facts
    finally:
        await connection.close()


def server_facts(url: str) -> dict[str, Any]:
    """Version and the settings that decide durable-commit cost, as the server reports them."""
    facts = asyncio.run(_facts(url))
    data_directory = facts.get("data_directory")
    facts["data_filesystem"] = filesystem_of(Path(data_directory)) if data_directory else None
    return facts


def filesystem_of(path: Path) -> str | None:
    """The type and device of the mount holding `path`, if it is on this machine."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    if not path.exists():
        return None
    best: tuple[int, str] | None = None
    target = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        device, mount_point, kind = fields[0], fields[1], fields[2]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) > best[0]):
            best = (len(mount_point), f"{kind} ({device} on {mount_point})")
    return best[1] if best else None
