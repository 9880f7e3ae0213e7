"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input or environment: the message says what happened and what to do."""

    user_error = True
