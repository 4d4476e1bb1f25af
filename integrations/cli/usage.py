"""The one error the ``fastbody`` command shows its user: a line on stderr, exit status 2."""

from __future__ import annotations


class UsageError(Exception):
    """A bad argument or a start-up check that failed: one line for the user, exit status 2."""
