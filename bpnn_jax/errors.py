"""Exception types of bpnn_jax.

Every problem with user input is raised as :class:`BPNNInputError` (or a
subclass) with a message that names the file and, where it applies, the line,
atom or field that is wrong.  The command-line interface prints these messages
without a traceback and exits with status 2.
"""

from __future__ import annotations


class BPNNError(Exception):
    """Base class of all errors raised by bpnn_jax on purpose."""


class BPNNInputError(BPNNError, ValueError):
    """Invalid user input: a file, a structure, a model or an argument."""


class XSFError(BPNNInputError):
    """An XSF file that cannot be read.

    Attributes:
        path: file name (str) or ``None``.
        line: 1-based line number of the problem, or ``None``.
        reason: what is wrong, without the location.
    """

    def __init__(self, path, reason: str, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = reason
        where = self.path if self.path is not None else "<xsf>"
        if line is not None:
            where = f"{where}, line {line}"
        super().__init__(f"{where}: {reason}")


class StructureError(BPNNInputError):
    """A structure that is readable but not usable (cell, atoms, elements)."""


class ModelError(BPNNInputError):
    """A model file that cannot be loaded or does not fit the data."""
