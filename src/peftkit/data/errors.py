"""The one error type of :mod:`peftkit.data`."""


class DataError(ValueError):
    """Input data cannot be read or encoded.

    The message names the file and line (reading) or the row index (encoding) and says how to fix it.
    """
