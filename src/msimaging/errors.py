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
    "RegistrationError",
    "RegistrationWarning",
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


class RegistrationError(MSImagingError, RuntimeError):
    """A registration converged to an implausible transform (it failed its sanity check).

    The failed transform, with its measured ``quality``, is on the ``transform`` attribute.
    """

    def __init__(self, message: str, transform: object = None) -> None:
        super().__init__(message)
        self.transform = transform


class RegistrationWarning(MSImagingWarning):
    """A registration failed its sanity check and the caller asked for a warning, not an error."""
