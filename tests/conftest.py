"""Shared fixtures: a real PostgreSQL (given, or a throwaway embedded one) and migrated databases."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from app.app import create_app
from app.config import Settings, asyncpg_dsn
from app.database import upgrade
from app.embedded import EmbeddedDatabase

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "callbacks.jsonl"
SDKAPPID = 1400000000
OTHER_SDKAPPID = 1400000001
API_TOKEN = "test-token"


def with_database(url: str, name: str) -> str:
    """The same server URL with another database name."""
    parts = urlsplit(asyncpg_dsn(url))
    return urlunsplit(parts._replace(path="/" + name))


async def _admin(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An admin URL to a real PostgreSQL: TEST_DATABASE_URL/DATABASE_URL, or one started here."""
    given = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if given:
        yield given
        return
    embedded = EmbeddedDatabase(tmp_path_factory.mktemp("pg"), delete_on_stop=True)
    try:
        embedded.start()
    except Exception as exc:  # never skip: a missing database is a failure
        pytest.fail(f"could not start the embedded PostgreSQL for the tests: {exc}")
    yield embedded.url("postgres")
    embedded.stop()


@pytest.fixture(scope="session")
def template_database(server_url: str) -> Iterator[str]:
    """A database migrated to head by Alembic, copied for each test."""
    name = f"pa_template_{os.getpid()}"
    asyncio.run(_admin(server_url, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"))
    upgrade(with_database(server_url, name))
    yield name
    asyncio.run(_admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def database_url(server_url: str, template_database: str) -> Iterator[str]:
    """A fresh database at head, dropped after the test."""
    name = f"pa_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f"CREATE DATABASE {name} TEMPLATE {template_database}"))
    yield with_database(server_url, name)
    asyncio.run(_admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """A fresh database with no schema at all."""
    name = f"pa_empty_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f"CREATE DATABASE {name}"))
    yield with_database(server_url, name)
    asyncio.run(_admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for a test app on `database_url`."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": Path("/nonexistent"),
        "sdkappids": (SDKAPPID, OTHER_SDKAPPID),
        "callback_token": None,
        "api_tokens": (API_TOKEN,),
        "max_body_bytes": 64 * 1024,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A plain connection to the test database."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    yield connection
    await connection.close()


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app in process, on the test database, lifespan run."""
    app = create_app(make_settings(database_url))
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def fixture_deliveries() -> list[dict[str, Any]]:
    """The shared sample deliveries."""
    return [json.loads(line) for line in FIXTURES.read_text().splitlines() if line.strip()]
