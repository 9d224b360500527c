"""Where snapshots come from: an agent over HTTP or a unix socket, a saved file, or
several targets at once.

Only the CLI uses these modules: analysis and renderers take what they need of a fetch
from ``diag.model`` (tests/diag/test_layout.py).
"""
