"""The `smartregion` command line."""
