"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class DatagenError(Exception):
    """A problem the user can fix (bad config, bad input file). Printed without a traceback."""
