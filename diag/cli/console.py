"""The one stderr console for progress, hints, warnings and errors."""

from rich.console import Console

stderr = Console(stderr=True, soft_wrap=True)
