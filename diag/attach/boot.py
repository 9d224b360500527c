"""The code ``diag attach`` runs inside the target process (not imported by diag itself).

``diag/_attach_boot.c`` executes this file on a thread of its own holding the GIL, with
``BOOT`` (the path of the loaded library) in a fresh globals dict.  It only claims its
order file and starts one ``threading.Thread``, which imports diag and does the work, so
the borrowed thread gives the GIL back at once.  Nothing here may raise or print: the
target's output must stay its own.
"""

import json
import os
import sys
import threading

_boot: str = globals()["BOOT"]


def _answer(result: dict) -> None:  # type: ignore[type-arg]
    tmp = f"{_boot}.result.{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(result, fh)
    os.replace(tmp, f"{_boot}.result")


def _work(order: dict) -> None:  # type: ignore[type-arg]
    try:
        added: list = []  # type: ignore[type-arg]
        loaded = getattr(sys.modules.get("diag"), "__file__", None)
        if loaded is None or os.path.dirname(os.path.dirname(loaded)) == order["paths"][0]:
            # diag's own install goes last on sys.path: the target's packages keep winning.
            for path in order["paths"]:
                if path not in sys.path:
                    sys.path.append(path)
                    added.append(path)
        elif "diag.attach.in_target" not in sys.modules and not os.path.exists(
                os.path.join(os.path.dirname(loaded), "attach", "in_target.py")):
            _answer({"error": f"the process already runs another diag, without attach support ({loaded})"})
            return
        from diag.attach import in_target

        if order["action"] == "detach":
            _answer(in_target.detach(added))
        else:
            _answer(in_target.attach(order, added))
    except BaseException as err:
        try:
            _answer({"error": f"{type(err).__name__}: {err}"})
        except BaseException:
            pass


def _claim() -> None:
    try:
        # Atomic against diag attach giving up: whoever renames the order file first wins.
        os.rename(f"{_boot}.json", f"{_boot}.claimed")
        with open(f"{_boot}.claimed") as fh:
            order = json.load(fh)
        # daemon given explicitly: Thread() would otherwise ask threading.current_thread(),
        # which registers this borrowed C thread as a dummy thread for good.
        threading.Thread(target=_work, args=(order,), name="diag-attach", daemon=True).start()
    except BaseException:
        pass


_claim()
