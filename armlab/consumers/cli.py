"""``armlab consume`` (the ingest service) and ``armlab bench ingest``."""

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


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @app.command("consume")
    def consume(
        exit_when_idle: float = typer.Option(
            None, "--exit-when-idle", min=0.0,
            help="Exit after this many seconds without records (scripts, benchmarks).",
        ),
        stats: bool = typer.Option(False, "--stats", help="Print metrics as JSON on exit."),
        metrics_port: int = typer.Option(
            None, "--metrics-port", help="Serve Prometheus metrics on this port."
        ),
        batch: int = typer.Option(5000, "--batch", min=1, help="Max records per batch."),
        group: str = typer.Option(None, "--group", help="Consumer group (ARMLAB_CONSUMER_GROUP)."),
        transport: str = typer.Option(
            None, "--transport", help="kafka (default) or memory (ARMLAB_TRANSPORT)."
        ),
    ) -> None:
        """Ingest impressions and feedback from Kafka into the database, exactly once in effect.

        SIGTERM/SIGINT finish the in-flight batch and exit 0. Logs are JSON lines on stderr.
        """
        import signal

        from armlab.consumers.metrics import IngestMetrics
        from armlab.consumers.runner import build_runner
        from armlab.platform.bootstrap import bootstrap
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
        runner = build_runner(services, transport=transport, group=group, max_batch=batch,
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

    bench = groups["bench"]

    @bench.command("ingest")
    def bench_ingest(
        events: int = typer.Option(100_000, "--events", min=100, help="Events per run."),
        partitions: int = typer.Option(2, "--partitions", min=1,
                                       help="Partitions of the bench topics."),
        processes: int = typer.Option(2, "--processes", min=0,
                                      help="Consumer processes for the scaling figure "
                                           "(0 skips it)."),
        as_json: bool = typer.Option(False, "--json", help="Print only JSON."),
    ) -> None:
        """Bare kafka-python read rate vs armlab's full ingest into PostgreSQL, same run.

        Needs ARMLAB_DATABASE_URL (PostgreSQL) and ARMLAB_KAFKA_BOOTSTRAP (`armlab dev up`).
        """
        from armlab.consumers.bench import run_bench
        from armlab.settings import get_settings

        result = run_bench(get_settings(), events=events, partitions=partitions,
                           processes=processes,
                           progress=None if as_json else lambda m: typer.echo(m, err=True))
        typer.echo(json.dumps(result, indent=None if as_json else 2))
