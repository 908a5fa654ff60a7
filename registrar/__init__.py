"""The registrar pool server: front end, pool, services and CLI."""

__version__ = "0.1.0"
