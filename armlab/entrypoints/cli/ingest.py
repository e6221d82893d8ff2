"""``armlab consume``: the ingest service (Kafka or the in-process bus into the database)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import typer

_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_json_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("armlab")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    logging.getLogger("kafka").setLevel(logging.ERROR)


def consume(
    exit_when_idle: float = typer.Option(
        None, "--exit-when-idle", min=0.0,
        help="Exit after this many seconds without records (scripts, benchmarks).",
    ),
    stats: bool = typer.Option(False, "--stats", help="Print metrics as JSON on exit."),
    metrics_port: int = typer.Option(
        None, "--metrics-port", help="Serve Prometheus metrics on this port."
    ),
    batch: int = typer.Option(
        None, "--batch", min=1, help="Max records per batch (default ARMLAB_INGEST_BATCH)."
    ),
    group: str = typer.Option(None, "--group", help="Consumer group (ARMLAB_CONSUMER_GROUP)."),
    transport: str = typer.Option(
        None, "--transport", help="kafka (default) or memory (ARMLAB_TRANSPORT)."
    ),
) -> None:
    """Ingest impressions and feedback from Kafka into the database, exactly once in effect.

    SIGTERM/SIGINT finish the in-flight batch and exit 0. Logs are JSON lines on stderr.
    """
    import signal

    from armlab.adapters.metrics import IngestMetrics
    from armlab.bootstrap import bootstrap
    from armlab.settings import get_settings

    settings = get_settings()
    setup_json_logging(settings.log_level)
    if transport not in (None, "kafka", "memory"):
        raise typer.BadParameter("--transport must be kafka or memory")
    services = bootstrap(settings)
    metrics = IngestMetrics()
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1", registry=metrics.registry)
    runner = services.ingest_runner(transport=transport, group=group, max_batch=batch,
                                    metrics=metrics)

    def _stop(signum: int, _frame: object) -> None:
        logging.getLogger("armlab.consumers").info(
            "signal received, finishing the in-flight batch", extra={"signal": signum}
        )
        runner.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        runner.run(exit_when_idle=exit_when_idle)
    finally:
        runner.close()
        services.close()
    if stats:
        typer.echo(json.dumps(metrics.snapshot()))


def offsets_show(
    group: str = typer.Option(None, "--group", help="Only this consumer group."),
) -> None:
    """Print each stored offset: group, topic, partition, next offset."""
    from armlab.bootstrap import bootstrap
    from armlab.services.consumer import stored_offsets
    from armlab.settings import get_settings

    services = bootstrap(get_settings())
    try:
        rows = stored_offsets(services.consumer_store, group)
    finally:
        services.close()
    if not rows:
        typer.echo("no stored offsets" + (f" for group {group!r}" if group else ""))
    for g, t, p, o in rows:
        typer.echo(f"{g}\t{t}\t{p}\t{o}")


def offsets_reset(
    group: str = typer.Option(..., "--group", help="The consumer group to reset."),
    topic: list[str] = typer.Option(
        None, "--topic", help="Only this topic (repeatable; default: every topic)."),
    to: str = typer.Option(
        "earliest", "--to",
        help="earliest: forget the offsets, so the group re-reads each log from its start "
             "(events already stored count once); latest: skip to the log end now."),
) -> None:
    """Reset a consumer group's stored offsets (stop its consumers first).

    Needed after a topic was deleted and created again, or the cluster migrated: the
    consumer refuses to start while a stored offset is beyond the end of its log.
    """
    from armlab.bootstrap import bootstrap
    from armlab.services.consumer import reset_offsets, stored_offsets
    from armlab.settings import get_settings

    if to not in ("earliest", "latest"):
        raise typer.BadParameter("--to must be earliest or latest")
    services = bootstrap(get_settings())
    try:
        topics = list(topic or ())
        if to == "latest":
            if not topics:
                topics = sorted({t for _, t, _, _ in
                                 stored_offsets(services.consumer_store, group)}
                                or {services.settings.topic_impressions,
                                    services.settings.topic_feedback})
            ends = services.log_end_offsets(topics)
        else:
            ends = {}
        n = reset_offsets(services.consumer_store, group, topics or None, to=ends)
    finally:
        services.close()
    what = ", ".join(topics) if topics else "every topic"
    if to == "latest":
        typer.echo(f"group {group!r}: {n} partition(s) of {what} set to the log end")
    else:
        typer.echo(f"group {group!r}: {n} stored offset(s) of {what} forgotten; its "
                   "consumers re-read each log from the start")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.command("consume")(consume)
    offsets_app = typer.Typer(
        help="The consumer offsets stored in the database (the consumer's source of truth).",
        no_args_is_help=True)
    app.add_typer(offsets_app, name="offsets")
    offsets_app.command("show")(offsets_show)
    offsets_app.command("reset")(offsets_reset)
