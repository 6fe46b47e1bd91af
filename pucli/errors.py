"""Typed errors raised by pucli's engine.

Every message is one line a user can act on: it names the file or option at fault and says what to
do. The CLI prints the message alone (no traceback unless ``--debug``) and exits with
``exit_code``: 2 for usage errors (a wrong option or argument), 1 for data errors (a file whose
content is unusable).
"""

from __future__ import annotations


class PucliError(Exception):
    """Base class of every error pucli raises on purpose. ``exit_code`` is the CLI's exit status."""

    exit_code: int = 1


class UsageError(PucliError):
    """A command-line option or argument is wrong (missing path, value out of range, ...)."""

    exit_code = 2


class OptionError(UsageError):
    """One engine parameter has a value it cannot take.

    The message names the engine's parameter (``class_prior 1.5: must be ...``); front ends that
    call the parameter something else rename it (:meth:`renamed`), so ``pucli select`` says
    ``--prior 1.5: ...``. ``parameter`` is the name, ``value`` the value given, ``problem`` the rest.
    """

    def __init__(self, parameter: str, value: object, problem: str) -> None:
        self.parameter, self.value, self.problem = parameter, value, problem
        super().__init__(f"{parameter} {value}: {problem}")

    def renamed(self, name: str) -> str:
        """The message with ``name`` (a flag, say) in place of the parameter."""
        return f"{name} {self.value}: {self.problem}"


class DataError(PucliError):
    """An input file or folder exists but its content cannot be used."""

    exit_code = 1


class TeacherFormatError(DataError):
    """A model file cannot be loaded safely (pickled module, unknown architecture, bad weights)."""


class ClassMappingError(DataError):
    """The positive set's class folders do not match the teacher's outputs."""


class NoImagesError(DataError):
    """A folder or list holds no readable image."""


class Interrupted(PucliError):
    """SIGINT (Ctrl-C) or SIGTERM stopped a command; finished work was kept for ``--resume``.

    The CLI exits with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""

    exit_code = 130


class MissingOptionError(OptionError):
    """An engine parameter that must be given in this case was not (``input_size is needed: ...``).

    Like :class:`OptionError`, front ends rename the parameter (:meth:`renamed`): ``pucli evaluate``
    says ``--input-size is needed: ...``."""

    def __init__(self, parameter: str, problem: str) -> None:
        self.parameter, self.value, self.problem = parameter, None, problem
        UsageError.__init__(self, f"{parameter} is needed: {problem}")

    def renamed(self, name: str) -> str:
        return f"{name} is needed: {self.problem}"


class PucliWarning(UserWarning):
    """Something a user should know that does not stop the command (issued with :func:`warnings.warn`;
    the CLI prints each as one ``warning:`` line on stderr)."""
