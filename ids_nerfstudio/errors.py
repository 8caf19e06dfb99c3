"""The one error contract of the command-line tools: a ``UserError`` is reported as one line and exit code 2.

Every check of user input (a flag, a file, a model name) raises ``UserError`` (or a subclass) with a message
that names the flag or file and says what to do; ``exit_on_user_error`` is the only place that turns it into
``<program>: error: <message>`` on stderr and ``sys.exit(2)``.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from typing import TextIO


class UserError(ValueError):
    """Bad input from the user: reported as one line naming the flag or file, without a traceback."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type's name if it has none:
    library errors (hub, torch.load, torchvision) run to many lines, a one-line report quotes the first."""
    text = str(error).strip()
    return text.splitlines()[0][:limit].strip() if text else type(error).__name__


def check_number(flag: str, value: float | None, *, positive: bool = False) -> None:
    """Raise ``UserError`` naming ``flag`` unless ``value`` (None: not set) is finite and >= 0 (> 0 if positive).

    nan and inf pass ``value > 0``-style checks one way or the other and then poison every later step.
    """
    if value is not None and not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
        raise UserError(f"{flag}: must be a finite number {'> 0' if positive else '>= 0'}, got {value}")


@contextlib.contextmanager
def exit_on_user_error(program: str, stream: TextIO | None = None) -> Iterator[None]:
    """Run the body; a ``UserError`` prints ``<program>: error: <message>`` and exits with code 2.

    The message goes to ``stream`` (default stderr; ns-train's checks use stdout, where nerfstudio prints).
    """
    try:
        yield
    except UserError as error:
        print(f"{program}: error: {error}", file=stream or sys.stderr, flush=True)
        sys.exit(2)
