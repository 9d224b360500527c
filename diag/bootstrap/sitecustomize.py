"""Start the diag agent in a process launched by ``diag run`` (no code change needed).

``diag run`` puts this directory first on PYTHONPATH; Python imports ``sitecustomize``
at start-up and the agent starts when ``DIAG_AGENT`` or ``DIAG_AGENT_DIR`` is set.
Any ``sitecustomize`` the environment already had still runs after ours.
"""

import os
import sys


def _start_agent() -> None:
    address = os.environ.get("DIAG_AGENT")
    agent_dir = os.environ.get("DIAG_AGENT_DIR")
    if not address and not agent_dir:
        return
    # The address is this process's: a Python subprocess inheriting it would bind the
    # same port (and fail) or the same unix socket.  With an agent directory each
    # process gets its own agent on a free port, so DIAG_AGENT_DIR stays for children.
    address = os.environ.pop("DIAG_AGENT", None)
    address_file = os.environ.pop("DIAG_AGENT_FILE", None)
    try:
        import diag.agent

        # With DIAG_AGENT_DIR each process writes <pid>.json there; forked children
        # (gunicorn workers) get their own agent when the port is ephemeral.
        diag.agent.start(address or None, announce=True, address_file=address_file or None,
                         agent_dir=agent_dir or None)
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
