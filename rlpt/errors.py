"""Errors the command line prints without a traceback. `RunFault` is the one base class of the faults a run cannot survive (a dead learner rank, a timeout, restarts used up, a sync
that failed or disagrees). Each is raised with a message that names the actor and the phase; the CLI catches this
class once and prints `error: <Class>: message` without a traceback (exit 1)."""

from __future__ import annotations


class RunFault(RuntimeError):
    """A runtime fault of the actor graph that ends the run; subclasses name the kind (LearnerRankLost, ...)."""


class SetupError(ValueError):
    """The user's setup (config, data, model directory, plug-in, command line) cannot make a run: the message names
    the key, file and line or path. The CLI catches this class once and prints `error: message` (exit 2), so it
    never has to import the modules that raise it (which keeps a failing preflight fast)."""


class UsageError(SetupError):
    """A command line that cannot be carried out as given (exit 2, the message says what to change)."""
