"""Former home of the CLI's shared helpers, kept so code written against it keeps working.

New code imports from the modules that own each name: :mod:`pucli.cli._errors` (error mapping,
signals, exit codes), :mod:`pucli.cli._output` (stdout/stderr, ``--json``, ``--quiet``, progress,
the run report), :mod:`pucli.cli._prompts` (questions on a terminal, output guards) and
:mod:`pucli.cli._options` (the shared options).
"""

from __future__ import annotations

from pucli.cli._errors import *
from pucli.cli._options import *
from pucli.cli._output import *
from pucli.cli._prompts import *
