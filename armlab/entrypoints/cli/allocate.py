"""``armlab allocate``: recompute allocation weights and sequential decisions on a cadence.

Imports of the services happen inside the command so ``armlab --help`` stays fast.
"""

from __future__ import annotations

import logging

import typer


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:

    @app.command("allocate")
    def allocate(
        once: bool = typer.Option(False, "--once", help="Run one allocation pass and exit."),
        interval: float = typer.Option(
            None, "--interval", help="Seconds between passes (default ARMLAB_ALLOCATOR_INTERVAL_S)."
        ),
    ) -> None:
        """Recompute allocation weights for every experiment on a cadence and store snapshots."""
        from armlab.bootstrap import bootstrap
        from armlab.services.allocator import allocation_loop
        from armlab.settings import get_settings

        settings = get_settings()
        logging.basicConfig(
            level=settings.log_level.upper(), format="%(asctime)s %(name)s %(message)s"
        )
        if interval is not None and interval <= 0:
            raise typer.BadParameter("--interval must be > 0")
        services = bootstrap(settings)
        try:
            allocation_loop(services.allocation_store, once=once,
                            interval_s=interval or settings.allocator_interval_s)
        finally:
            services.close()
