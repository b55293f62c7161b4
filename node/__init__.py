"""smartregion hub node: identity, storage, sealed ingest, admin, CLI."""

__version__ = "0.1.0"
