"""Entry points: the HTTP API, the command line, the demos and the HTML report."""
