"""Exceptions that prefscout raises for failures a user can act on.

The CLI prints the message of any `PrefscoutError` as one line and exits with status 1; other
exceptions are bugs and keep their traceback.
"""


class PrefscoutError(Exception):
    """A failure whose message states what went wrong, on which value, and what to do."""


class InputError(PrefscoutError):
    """An input file, row or value is invalid."""


class ConfigError(PrefscoutError):
    """The workspace configuration or a command-line option is invalid."""


class LabelStudioError(PrefscoutError):
    """The Label Studio server failed, rejected a request or could not be reached."""


class UnknownStrategyError(PrefscoutError, ValueError):
    """An acquisition strategy name is not registered."""
