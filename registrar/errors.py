"""Exceptions of the registrar's compiled modules.

They derive from built-in exceptions other than ``Exception``, which mypyc does not compile, so
they live here, in a module that always runs interpreted (docs/native.md); the modules that
raise them re-export them (``registrar.location.LocationStoreError``).
"""

from __future__ import annotations

__all__ = ["LocationStoreError"]


class LocationStoreError(ValueError):
    """The bindings file cannot be opened, read or written.

    The message names the file and what to do (e.g. move a corrupt file aside). Raised by
    :meth:`LocationService.open`, :meth:`~LocationService.flush` and
    :meth:`~LocationService.close`; never raised by the in-memory operations. A ``ValueError``
    so that ``registrar serve`` reports it like any other unusable state file (one line on
    stderr, exit status 2).
    """
