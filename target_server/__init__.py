"""A small aiohttp service with deliberately leaky endpoints, used as the target that diag inspects."""

__version__ = "0.1.0"
