"""Typed errors of the SIP stack.

Every malformed input surfaces as exactly one exception type, :class:`SipParseError`, which
carries the status code a server should answer with (RFC 3261 §8.2, §21.4; RFC 4475).
"""

from __future__ import annotations


class SipParseError(ValueError):
    """A SIP message (or part of one) could not be parsed or violates the grammar.

    Attributes:
        status: the response status a UAS/proxy should send for a request carrying this error
            (``400`` Bad Request, ``505`` Version Not Supported, ``513`` Message Too Large,
            ``416`` Unsupported URI Scheme, ...). For responses the caller drops the message.
        reason: a short human-readable reason, safe to put in a reason phrase or ``Warning``
            (non-printable characters are replaced by ``?``).

    Source: RFC 3261 §7, §25 (grammar), §8.2 (UAS behaviour), §21.4 (status codes).
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        if not reason.isprintable():
            # The reason may end up in a Warning header or a log line: no CR/LF, no controls.
            reason = "".join(c if c.isprintable() else "?" for c in reason)
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def __repr__(self) -> str:
        return f"SipParseError({self.reason!r}, status={self.status})"


class TransactionStateError(RuntimeError):
    """The TU asked a transaction for something its state does not allow (e.g. a second final
    response, or any response once the transaction is terminated or unknown).

    Source: RFC 3261 §17.2 (the server transaction states). Defined here, not in
    :mod:`sipstack.transaction`, because that module is compiled (mypyc compiles no class
    derived from a built-in exception); it is importable from both.
    """
