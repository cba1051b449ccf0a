"""Flower's Ray backend handed a ClientApp loader that pickles as the app, not as a closure.

Why this exists: Flower's simulation engine gives its Ray backend a function
that returns the ClientApp (``flwr 1.41``, ``vce_api.start_vce``: the nested
``_load``), and the backend sends that function to an actor with *every*
message (``RayBackend.process_message``). Being a nested function, Ray's
cloudpickle serialises it by value each time: its code object, globals and
closure (the run, the app's path): ~0.24 ms per message on the driver and the
matching unpickling in the actor, eighteen times what fedguard's site app costs
(:class:`client.app.SiteClientApp` pickles as a token and its recipe, ~13 µs).
In a SecAgg+ round (four message waves) at 200 sites that was 0.2 CPU-s per
round on the driver alone (``benchmarks/simulation.py``, RESULTS.md, 2026-12-06).

:func:`app_by_reference` makes the backend built during one ``run_simulation``
call resolve the loader once, on the driver, and send :class:`LoadedApp`, a
module-level callable holding the app itself, instead. Actors get the same
ClientApp object they would have built (Flower's loader returns the very app
passed to ``run_simulation``), so nothing a site sees or sends changes. On a
Flower whose backend lacks the method this relies on it leaves Flower's own
in place and logs so. A deployment (SuperNodes, no Ray backend) is untouched.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

from flwr.clientapp import ClientApp

from simulations import logger
from simulations.engine_patch import replaced


class LoadedApp:
    """A ClientApp loader that returns the app it holds; pickles as a class reference and that app."""

    def __init__(self, app: ClientApp) -> None:
        self.app = app

    def __call__(self) -> ClientApp:
        return self.app


def _backend_module() -> ModuleType:
    return importlib.import_module("flwr.server.superlink.fleet.vce.backend.raybackend")


def supported() -> bool:
    """Whether this Flower's Ray backend stores the loader in ``build`` the way 1.41's does."""
    backend = getattr(_backend_module(), "RayBackend", None)
    code = getattr(getattr(backend, "build", None), "__code__", None)
    return code is not None and "app_fn" in code.co_names


def _by_reference(flower_backend: type) -> type:
    class AppByReferenceBackend(flower_backend):  # type: ignore[misc]
        """Flower's ``RayBackend`` whose loader is :class:`LoadedApp` (resolved once, here)."""

        def build(self, app_fn: Callable[[], ClientApp]) -> None:
            super().build(LoadedApp(app_fn()))

    return AppByReferenceBackend


_installed = threading.Lock()


@contextmanager
def app_by_reference() -> Iterator[bool]:
    """Build the Ray backends made inside this block with a :class:`LoadedApp`; yields whether they are.

    One simulation at a time per process holds it (a second, concurrent one uses Flower's loader).
    """
    if not supported():
        logger.info("simulation engine: Flower's own ClientApp loader (this Flower's Ray backend differs from 1.41's)")
        yield False
        return
    with replaced(_backend_module(), "RayBackend", _by_reference, _installed) as installed:
        yield installed
