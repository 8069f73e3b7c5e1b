"""Errors a user can cause: the CLI prints their message on one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input (bad name, bad value, missing file), not a bug."""
