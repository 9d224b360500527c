"""Start the diag agent in a process launched by ``diag run`` (no code change needed).

``diag run`` puts this directory first on PYTHONPATH; Python imports ``sitecustomize``
at start-up.  Any ``sitecustomize`` the environment already had still runs after ours.
"""

import os
import sys


def _start_agent() -> None:
    address = os.environ.get("DIAG_AGENT")
    if not address:
        return
    try:
        import diag.agent

        diag.agent.start(address, announce=True, address_file=os.environ.get("DIAG_AGENT_FILE") or None)
    except Exception as err:  # never stop the program from starting
        print(f"diag agent: not started: {err}", file=sys.stderr)


def _chain_next_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    import importlib.machinery
    import importlib.util

    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_start_agent()
_chain_next_sitecustomize()
