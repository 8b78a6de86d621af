"""The `profile-audit` command line."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Annotated

import asyncpg
import typer
from rich.progress import TaskID

from app.config import (
    EMBEDDED_URL_VARIABLE,
    ConfigError,
    Settings,
    asyncpg_dsn,
    get_settings,
    require_sdkappids,
)
from app.database import head_revision, select_revision, upgrade
from app.embedded import EmbeddedDatabase

cli = typer.Typer(
    name="profile-audit",
    help="Event-sourced audit log for Tencent Cloud IM profile-change callbacks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@contextmanager
def progress_display(command: str) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar per phase on a terminal, else a log line each tenth of a phase."""
    if not sys.stderr.isatty():
        tenths: dict[str, int] = {}

        def log_line(phase: str, done: int, total: int) -> None:
            tenth = 10 * done // total if total > 0 else 10
            if tenth > tenths.get(phase, -1):
                tenths[phase] = tenth
                typer.echo(f"{command}: {phase} {done}/{total}", err=True)

        yield log_line
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(PHASES.get(phase, phase), total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield update


PHASES = {
    "replay": "replaying events",
    "build": "building projections",
    "catch-up": "catching up on new events",
    "swap": "swapping in",
    "log": "checking the log",
    "projections": "folding the log and comparing the projections",
}


class Failure(Exception):
    """A command failed; the message is the one-line reason shown to the user."""


def _settings(*, takes_callbacks: bool = False) -> Settings:
    try:
        settings = get_settings()
        if takes_callbacks:
            require_sdkappids(settings)
    except ConfigError as exc:
        raise Failure(str(exc)) from exc
    return settings


@contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The database URL: DATABASE_URL, or the embedded server, started (and stopped) here."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    embedded = EmbeddedDatabase(settings.data_dir)
    try:
        url = embedded.start()
    except Exception as exc:
        raise Failure(f"could not start the embedded PostgreSQL in {settings.data_dir}: {exc}") from exc
    try:
        upgrade(url)
        yield url
    finally:
        embedded.stop()


async def _schema_revision(url: str) -> str | None:
    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        return await select_revision(connection)
    finally:
        await connection.close()


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    read_workers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Extra worker processes for all but callbacks (read API, stream, health, metrics);"
            " the callback workers then run at a lower CPU priority, so reads stay fast under load.",
        ),
    ] = 0,
) -> None:
    """Run the HTTP service (on the embedded database, created and migrated, when no DATABASE_URL)."""
    from app.workers import serve_app

    settings = _settings(takes_callbacks=True)
    with database(settings) as url:
        if not settings.embedded:
            revision, expected = asyncio.run(_schema_revision(url)), head_revision()
            if revision != expected:
                raise Failure(
                    f"database schema is at {revision or 'nothing'}, expected {expected}:"
                    " run `profile-audit migrate` first"
                )
        else:
            os.environ[EMBEDDED_URL_VARIABLE] = url
            typer.echo(f"profile-audit: embedded PostgreSQL in {settings.data_dir}", err=True)
        for default in settings.dev_defaults:
            typer.echo(f"profile-audit: WARNING development default {default}", err=True)
        # Workers write their metrics to one directory and /metrics adds them up.
        own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if own_metrics_dir:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="profile-audit-metrics-")
        # uvicorn re-raises SIGTERM after its graceful shutdown; make that a normal exit (0) so the
        # embedded database is stopped on the way out.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        try:
            serve_app(
                "app.app:create_app_from_env",
                host=host,
                port=port,
                workers=workers,
                read_workers=read_workers,
                log_level=settings.log_level.lower(),
            )
        finally:
            if own_metrics_dir:
                shutil.rmtree(os.environ.pop("PROMETHEUS_MULTIPROC_DIR"), ignore_errors=True)


def _exit_on_signal(_signum: int, _frame: object) -> None:
    raise SystemExit(0)  # a requested, graceful stop (systemd, make, docker stop) is a success


@cli.command()
def migrate() -> None:
    """Upgrade the database schema to the newest revision."""
    settings = _settings()
    with database(settings) as url:
        if not settings.embedded:
            upgrade(url)
        typer.echo(f"schema at {head_revision()}")


@cli.command()
def verify(
    projections: Annotated[
        bool,
        typer.Option(
            "--projections",
            help="Also fold the log as a rebuild does and compare every projection's table with it, row for row.",
        ),
    ] = False,
) -> None:
    """Check the event log end to end; exit 0 when intact, 1 with the first bad position.

    With --projections, also check that each projection's table is the fold of the log (what a rebuild would make of it now), in one snapshot while the service keeps serving: a stale projection, or any row missing or unexpected, exits 1. The fold goes to temporary tables about the size of the projections; a rebuild cannot start meanwhile.
    """
    from app.rebuild import RebuildBusy
    from app.verify import ProjectionCheck, verify_log, verify_projections

    settings = _settings()
    with database(settings) as url:

        async def run() -> int:
            position, checks = 0, list[ProjectionCheck]()
            connection = await asyncpg.connect(asyncpg_dsn(url))
            try:
                with progress_display("verify") as progress:
                    if projections:  # first: a rebuild running refuses it at once
                        position, checks = await verify_projections(
                            connection, progress=lambda done, total: progress("projections", done, total)
                        )
                    head = int(await connection.fetchval("SELECT position FROM log_head"))

                    def checked_up_to(checked: int) -> None:
                        progress("log", checked, max(head, checked))

                    result = await verify_log(connection, progress=checked_up_to)
                    checked_up_to(result.events_checked)
            except RebuildBusy as exc:
                raise Failure(str(exc)) from exc
            finally:
                await connection.close()
            if result.intact:
                typer.echo(f"intact: {result.events_checked} events, last position {result.last_position}")
            else:
                typer.echo(f"TAMPERED at position {result.bad_position}: {result.reason}")
            for check in checks:
                if check.stale:
                    typer.echo(f"projection {check.name}: STALE, not compared: {check.stale}")
                elif check.matches:
                    typer.echo(
                        f"projection {check.name}: matches the log up to position {position} ({check.rows} rows)"
                    )
                else:
                    typer.echo(
                        f"projection {check.name}: DIFFERS from the log up to position {position}:"
                        f" {check.verdict} ({check.rows} rows)"
                    )
                    for example in check.examples:
                        typer.echo(f"  {example}")
            return 0 if result.intact and all(check.matches for check in checks) else 1

        code = asyncio.run(run())
    raise typer.Exit(code)


@cli.command()
def rebuild(
    names: Annotated[list[str] | None, typer.Argument(help="Projections to rebuild (default: all).")] = None,
    jobs: Annotated[
        int, typer.Option(min=1, max=16, help="Database connections working at once (PostgreSQL cores used).")
    ] = 2,
) -> None:
    """Rebuild projections from the event log while the service keeps serving."""
    from app.rebuild import RebuildBusy, rebuild_projections, select_projections

    try:
        chosen = [p.name for p in select_projections(names or [])]
    except ValueError as exc:
        raise Failure(str(exc)) from exc
    settings = _settings()
    with database(settings) as url:

        async def run() -> None:
            connections = [await asyncpg.connect(asyncpg_dsn(url)) for _ in range(jobs)]
            try:
                with progress_display("rebuild") as progress:
                    report = await rebuild_projections(
                        connections[0], chosen, progress=progress, helpers=connections[1:]
                    )
            except RebuildBusy as exc:
                raise Failure(str(exc)) from exc
            finally:
                for connection in connections:
                    await connection.close()
            typer.echo(
                f"rebuilt {', '.join(report.projections)}: {report.events_replayed} events replayed"
                f" in {report.seconds:.2f} s ({report.events_per_second:,.0f} events/s),"
                f" up to position {report.last_position}; appends waited"
                f" {report.append_lock_seconds:.2f} s for the swap and its last"
                f" {report.events_caught_up_under_lock} events"
            )

        asyncio.run(run())


async def _require_schema_at_head(settings: Settings, url: str) -> None:
    """Failure unless the schema is at head (the embedded database was just migrated)."""
    if settings.embedded:
        return
    revision, expected = await _schema_revision(url), head_revision()
    if revision != expected:
        raise Failure(
            f"database schema is at {revision or 'nothing'}, expected {expected}:"
            " run `profile-audit migrate` first"
        )


@cli.command()
def export(
    after: Annotated[
        int, typer.Option(min=0, metavar="POS", help="Export only the events after this position.")
    ] = 0,
) -> None:
    """Write the event log to standard output as JSON Lines, in position order.

    Each line is one event exactly as `GET /events` shows it (position, sdkappid, command, user_id, user_version, event_time, received_at, metadata, payload, digest, hash). The export ends at the log head as it was when it started; a summary goes to standard error. `profile-audit import` reads it back.
    """
    from app.transfer import export_events

    settings = _settings()
    with database(settings) as url:

        async def run() -> None:
            await _require_schema_at_head(settings, url)
            connection = await asyncpg.connect(asyncpg_dsn(url))
            out = sys.stdout.buffer
            try:
                report = await export_events(connection, out.write, after=after)
                out.flush()
            except BrokenPipeError as exc:
                # The reader went away (`| head`): stop quietly, without a traceback at exit.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                raise Failure("standard output was closed before the export finished") from exc
            finally:
                await connection.close()
            typer.echo(f"exported {report.events} events, up to position {report.last_position}", err=True)

        asyncio.run(run())


@cli.command("import")
def import_(
    file: Annotated[
        str, typer.Argument(metavar="FILE", help="JSON Lines from `export`; `-` for standard input.")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and count the lines, write nothing.")
    ] = False,
) -> None:
    """Append the events of an export (JSON Lines), validated and de-duplicated like callbacks.

    Each line is checked like a delivery (its metadata's SdkAppid against PROFILE_AUDIT_SDKAPPID, no Sign needed; the payload validated for its CallbackCommand) and appended in batches with its original received_at. An event already in the log (same SDKAppID, same JSON content) is a duplicate and is not stored again, so importing a file twice adds nothing.

    A bad line is reported on standard error with its line number and skipped; the import goes on. Prints `new N, duplicate N, rejected N` at the end. Exit status: 0 when no line was rejected, 1 otherwise.
    """
    from app.transfer import import_lines

    settings = _settings(takes_callbacks=True)
    try:
        source: IO[bytes] = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115
    except OSError as exc:
        raise Failure(f"cannot read {file}: {exc.strerror or exc}") from exc

    def on_reject(number: int, reason: str) -> None:
        typer.echo(f"line {number}: rejected: {reason}", err=True)

    with source, database(settings) as url:

        async def run() -> int:
            await _require_schema_at_head(settings, url)
            connection = await asyncpg.connect(asyncpg_dsn(url))
            try:
                report = await import_lines(
                    connection,
                    source,
                    sdkappids=settings.sdkappids,
                    max_body_bytes=settings.max_body_bytes,
                    dry_run=dry_run,
                    on_reject=on_reject,
                )
            finally:
                await connection.close()
            typer.echo(report.summary() + (" (dry run: nothing written)" if dry_run else ""))
            return 0 if report.rejected == 0 else 1

        code = asyncio.run(run())
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point: one-line reason and a non-zero exit on failure."""
    try:
        cli()
    except Failure as exc:
        typer.echo(f"profile-audit: error: {exc}", err=True)
        sys.exit(1)
    except (OSError, asyncpg.PostgresError) as exc:
        typer.echo(f"profile-audit: error: {exc.__class__.__name__}: {exc}", err=True)
        sys.exit(1)
