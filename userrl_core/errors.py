"""Errors that reach the user as one clear line and exit status 2 (no traceback)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a recipe, a dataset row, a plugin name, a missing key.

    The message names the key, file or row at fault. The CLI prints it on one line and exits
    with status 2.
    """

    exit_code = 2


class ConfigError(UserError):
    """A recipe that does not compose or validate."""


class UnknownNameError(UserError):
    """A recipe or dataset names a plugin that is not registered."""


class DataError(UserError):
    """A dataset file or row that cannot be used."""


class MissingRequirementError(UserError):
    """Something a recipe needs is absent on this machine (GPUs, an extra, a key, a model)."""


class PluginConflictError(UserError):
    """Two plugins registered the same name."""


class PluginError(UserError):
    """Third-party plugin code failed where one clear line serves better than a traceback
    (``userrl simulate`` on an environment that raises)."""


class RunStopped(Exception):
    """Raised inside the trainer when a stopper asked the run to end."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A ``KeyboardInterrupt`` subclass on purpose: every path that cleans up
    after Ctrl-C (summary, report, child processes) cleans up after SIGTERM the same way;
    only the recorded status (``terminated``) and the exit status (143) differ."""
