"""Errors raised for bad input data."""


class DataError(ValueError):
    """Input data is malformed; the message names the file, line and field where it can."""
