"""Typed errors raised by pucli's engine.

Every message is one line a user can act on: it names the file or parameter at fault and says what
to do. The CLI prints the message alone (no traceback unless ``--debug``) and exits with
``exit_code``: 2 for usage errors (a wrong option or argument), 1 for data errors (a file whose
content is unusable).

The engine speaks in its own parameters, never in a front end's spelling of them. An error about
one parameter carries it as a field (``parameter``, with the ``value`` or ``path`` given) and its
message opens with the parameter's name: ``positive ./labeled does not exist: ...``. A parameter
named inside a message is written between backticks, alone (`` `class_prior` ``), with a value
(`` `align=none` ``, `` `resume=True` ``), or after another pucli command
(`` `pucli select all_items=True` ``): :data:`MENTION` finds them. A front end puts its own
spelling in their place (the CLI: ``--positive ./labeled does not exist``, ``give --prior``,
``--align none``, ```pucli select --all```; :mod:`pucli.cli._errors`). The same holds for warnings
(:class:`PucliWarning`) and for the warnings a result carries.
"""

from __future__ import annotations

import os
import re

__all__ = [
    "MENTION",
    "ClassMappingError",
    "DataError",
    "Interrupted",
    "MissingOptionError",
    "NoImagesError",
    "OptionError",
    "PucliError",
    "PucliWarning",
    "TeacherFormatError",
    "UsageError",
]

MENTION = re.compile(r"`(?:pucli (?P<command>[a-z]+)(?P<arguments>(?: [^`\s]+)*)|(?P<parameter>[a-z][a-z0-9_]*)"
                     r"(?:=(?P<value>[^`\s]*))?)`")
"""A parameter named inside a message: `` `name` `` or `` `name=value` `` (a parameter of the
running call), or `` `pucli COMMAND [ARGUMENT...]` `` where each lower-case ``name`` or
``name=value`` argument is a parameter of that command (upper-case words such as ``MODEL`` and
``...`` are kept as they are)."""


class PucliError(Exception):
    """Base class of every error pucli raises on purpose. ``exit_code`` is the CLI's exit status.

    Attributes:
        parameter: the engine parameter at fault, or None; when given, the message opens with it.
        path: the file or folder at fault, or None.
        value: the value the parameter was given, or None.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, parameter: str | None = None, path: str | os.PathLike[str] | None = None,
                 value: object = None) -> None:
        super().__init__(message)
        self.parameter, self.path, self.value = parameter, path, value

    def renamed(self, name: str) -> str:
        """The message with ``name`` (a flag, say) in place of the parameter it opens with."""
        message = str(self)
        if self.parameter and message.startswith(self.parameter) \
                and message[len(self.parameter):len(self.parameter) + 1] in ("", " ", ":"):
            return name + message[len(self.parameter):]
        return message


class UsageError(PucliError):
    """A command-line option or argument is wrong (missing path, value out of range, ...)."""

    exit_code = 2


class OptionError(UsageError):
    """One engine parameter has a value it cannot take.

    The message names the engine's parameter (``class_prior 1.5: must be ...``); front ends that
    call the parameter something else rename it (:meth:`renamed`), so ``pucli select`` says
    ``--prior 1.5: ...``. ``parameter`` is the name, ``value`` the value given, ``problem`` the rest.
    """

    def __init__(self, parameter: str, value: object, problem: str, *,
                 path: str | os.PathLike[str] | None = None) -> None:
        self.problem = problem
        super().__init__(f"{parameter} {value}: {problem}", parameter=parameter, path=path, value=value)


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
        self.problem = problem
        UsageError.__init__(self, f"{parameter} is needed: {problem}", parameter=parameter)


class PucliWarning(UserWarning):
    """Something a user should know that does not stop the command (issued with :func:`warnings.warn`;
    the CLI prints each as one ``warning:`` line on stderr, its parameters named as the module
    docstring says)."""
