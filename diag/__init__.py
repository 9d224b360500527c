"""diag: find why an asyncio service hangs, leaks or slows down."""

__version__ = "0.1.0"
