"""Settings read from the environment (and an optional `.env`) each time they are asked for."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import platformdirs
from dotenv import dotenv_values

DEV_SDKAPPID = 1400000000
DEV_API_TOKEN = "dev"
DEFAULT_MAX_BODY_BYTES = 64 * 1024
EMBEDDED_URL_VARIABLE = "PROFILE_AUDIT_EMBEDDED_URL"


class ConfigError(ValueError):
    """A setting has a value the service cannot use."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """The service's configuration, as read from the environment."""

    database_url: str | None
    data_dir: Path
    sdkappids: tuple[int, ...]
    callback_token: str | None
    api_tokens: tuple[str, ...]
    max_body_bytes: int
    embedded: bool = False
    dev_defaults: tuple[str, ...] = ()
    log_level: str = "INFO"
    log_json: bool = True
    stream_keepalive_seconds: float = 15.0
    stream_buffer: int = 1000


def _environ(env_file: Path | None) -> dict[str, str]:
    path = env_file if env_file is not None else Path.cwd() / ".env"
    values: dict[str, str] = {}
    if path.is_file():
        values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    values.update(os.environ)  # the real environment wins over .env
    return values


def _split(raw: str | None) -> list[str]:
    return [part.strip() for part in (raw or "").split(",") if part.strip()]


def _positive(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{name}: must be positive")
    return value


def default_data_dir() -> Path:
    """The per-user data directory, or `./.profile-audit` when none can be had."""
    try:
        return Path(platformdirs.user_data_dir("profile-audit", appauthor=False))
    except Exception:  # pragma: no cover - platformdirs raises only on exotic platforms
        return Path.cwd() / ".profile-audit"


def get_settings(env_file: Path | None = None) -> Settings:
    """Read the settings now; raises ConfigError with a one-line reason when one is unusable."""
    env = _environ(env_file)
    database_url = env.get("DATABASE_URL") or None
    if database_url is not None:
        asyncpg_dsn(database_url)  # a URL of another scheme is a ConfigError now, not a traceback later
    # Set by `profile-audit serve` for its workers once it has started the embedded database.
    embedded_url = env.get(EMBEDDED_URL_VARIABLE) or None
    embedded = database_url is None
    dev_defaults: list[str] = []

    sdkappids: list[int] = []
    for part in _split(env.get("PROFILE_AUDIT_SDKAPPID")):
        if not part.isdigit():
            raise ConfigError(f"PROFILE_AUDIT_SDKAPPID: {part!r} is not a numeric SDKAppID")
        sdkappids.append(int(part))
    # Without DATABASE_URL a development default applies; with it, commands that take callbacks
    # (serve, import) refuse to run without one: see require_sdkappids.
    if not sdkappids and embedded:
        sdkappids = [DEV_SDKAPPID]
        dev_defaults.append(f"PROFILE_AUDIT_SDKAPPID={DEV_SDKAPPID}")

    api_tokens = _split(env.get("PROFILE_AUDIT_API_TOKENS"))
    if not api_tokens and embedded:
        api_tokens = [DEV_API_TOKEN]
        dev_defaults.append(f"PROFILE_AUDIT_API_TOKENS={DEV_API_TOKEN}")

    raw_max = env.get("PROFILE_AUDIT_MAX_BODY_BYTES") or str(DEFAULT_MAX_BODY_BYTES)
    if not raw_max.isdigit() or int(raw_max) <= 0:
        raise ConfigError(f"PROFILE_AUDIT_MAX_BODY_BYTES: {raw_max!r} is not a positive integer")

    token = env.get("PROFILE_AUDIT_CALLBACK_TOKEN") or None
    if token is not None and not 1 <= len(token) <= 128:
        raise ConfigError("PROFILE_AUDIT_CALLBACK_TOKEN must be 1 to 128 characters")

    data_dir = env.get("PROFILE_AUDIT_DATA_DIR")
    return Settings(
        database_url=database_url or embedded_url,
        embedded=embedded,
        data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir(),
        sdkappids=tuple(sdkappids),
        callback_token=token,
        api_tokens=tuple(api_tokens),
        max_body_bytes=int(raw_max),
        dev_defaults=tuple(dev_defaults),
        log_level=(env.get("PROFILE_AUDIT_LOG_LEVEL") or "INFO").upper(),
        stream_keepalive_seconds=_positive(env, "PROFILE_AUDIT_STREAM_KEEPALIVE_SECONDS", 15.0),
        stream_buffer=int(_positive(env, "PROFILE_AUDIT_STREAM_BUFFER", 1000)),
        log_json=(env.get("PROFILE_AUDIT_LOG_FORMAT") or "json").lower() != "console",
    )


def require_sdkappids(settings: Settings) -> None:
    """ConfigError unless at least one SDKAppID is configured (needed to accept callbacks)."""
    if not settings.sdkappids:
        raise ConfigError("PROFILE_AUDIT_SDKAPPID is required when DATABASE_URL is set")


def asyncpg_dsn(url: str) -> str:
    """The URL as plain `postgresql://` for asyncpg (accepts the SQLAlchemy `+asyncpg` form)."""
    for prefix in ("postgresql+asyncpg://", "postgres+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    if not url.startswith("postgresql://"):
        raise ConfigError("DATABASE_URL must start with postgresql:// or postgresql+asyncpg://")
    return url


def sqlalchemy_url(url: str) -> str:
    """The URL in SQLAlchemy's `postgresql+asyncpg://` form."""
    return "postgresql+asyncpg://" + asyncpg_dsn(url)[len("postgresql://") :]
