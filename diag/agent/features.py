"""Where each feature adds its agent routes; one line per feature module."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diag.agent.endpoints import Endpoints


def install_features(endpoints: "Endpoints") -> None:
    """Add every feature's routes to ``endpoints``."""
    del endpoints  # no feature modules yet beyond tasks and health
