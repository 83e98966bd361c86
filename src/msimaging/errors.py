"""Errors and warnings raised by msimaging.

Every message names the file or argument at fault, says what is wrong and how to fix it.
Catch :class:`MSImagingError` to handle any of them; the subclasses also derive from the
matching built-in (``ValueError``, ``FileNotFoundError``, ``ImportError``) so generic handlers
keep working.
"""

from __future__ import annotations

__all__ = [
    "BIDSError",
    "DependencyError",
    "DesignError",
    "InputError",
    "LabelError",
    "MSImagingError",
    "MSImagingWarning",
    "OutputError",
]


class MSImagingError(Exception):
    """Base class of every error raised on purpose by msimaging."""


class InputError(MSImagingError, ValueError):
    """An input file, image, table or argument is missing, unreadable or invalid."""


class BIDSError(InputError):
    """A BIDS dataset cannot be read as one (missing root, unreadable sessions.tsv, ...)."""


class LabelError(BIDSError):
    """A participant or session label is not a valid BIDS label, or not in the dataset."""


class DesignError(MSImagingError, ValueError):
    """A statistical design (design matrix, contrast, exchange blocks) is invalid."""


class OutputError(MSImagingError, OSError):
    """An output cannot be written where asked (e.g. inside the input dataset)."""


class DependencyError(MSImagingError, ImportError):
    """An optional dependency is not installed; the message gives the pip command."""


class MSImagingWarning(UserWarning):
    """Something was inferred or adjusted that the user should know about."""
