"""The ``armlab`` command line (typer). One module per command group."""
