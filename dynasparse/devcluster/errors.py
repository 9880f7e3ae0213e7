"""Errors of the dev cluster that the user can fix (missing build, port clash, bad directory).

Raised by every module of `dynasparse.devcluster`; the CLI prints them as one line and exits 2.
"""


class DevClusterError(Exception):
    """Something the user can act on: the message says what happened and what to do."""

    user_error = True
