"""Where each feature adds its agent routes; one line per feature module."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diag.agent.endpoints import Endpoints


def install_features(endpoints: "Endpoints") -> None:
    """Add every feature's routes to ``endpoints``."""
    from diag.agent import metrics_routes, objects_routes, profile_routes, sync_routes

    sync_routes.install(endpoints)
    profile_routes.install(endpoints)
    objects_routes.install(endpoints)
    metrics_routes.install(endpoints)
