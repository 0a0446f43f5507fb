"""/health bodies for the prober tests, as the server's own code builds them (tests/contracts)."""

from tests.contracts.server_bodies import LOADING_BODY, READY_BODY

__all__ = ["LOADING_BODY", "READY_BODY"]
