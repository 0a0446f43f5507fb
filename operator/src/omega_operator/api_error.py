"""The error of a failed Kubernetes API call (pure: no I/O; ``kube`` raises it, ``metrics`` reads it)."""

from __future__ import annotations


class ApiError(Exception):
    """A failed API call; `status` is the HTTP status (0 for a connection failure)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth retrying: connection problems, conflicts, throttling, server errors."""
        return self.status in (0, 409, 429) or self.status >= 500
