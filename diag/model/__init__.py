"""The data that crosses layers: the snapshots (tasks, sync primitives, heap, profile),
the task snapshot's compact wire form, and the values the transport hands to analysis
and renderers (``TargetResult``, ``TopSample``).

Frozen dataclasses of numbers, strings and tuples that round-trip through JSON.  Nothing
here imports from collect, agent, sources, analysis, render or cli
(tests/diag/test_layout.py).
"""
