"""The `svmemu` process (the script and ``python -m emu.cli``), apart from emu.cli.main so that
it can act before main's imports run.

Start-up makes some 100,000 objects (modules, functions, classes, tables) and frees almost
none, so the cyclic collector's passes over them find nothing: ~5 ms of a ~100 ms boot. They
run with the collector off; what they made is then frozen out of every later collection
(a long run's full collections no longer walk it either) and the collector is on again for
the guest."""
from __future__ import annotations

import gc


def start() -> None:
    gc.disable()
    try:
        from emu.cli.main import entry     # here, with the collector off (see above)
    finally:
        gc.freeze()
        gc.enable()
    entry()
