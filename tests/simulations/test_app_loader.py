"""Flower's Ray backend, inside a simulation, sends the ClientApp itself to its actors, not Flower's loader closure."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import ray.cloudpickle as cloudpickle
from flwr.clientapp import ClientApp

from client.app import make_client_app
from simulations.app_loader import LoadedApp, app_by_reference, supported

raybackend = importlib.import_module("flwr.server.superlink.fleet.vce.backend.raybackend")
FlowerBackend = raybackend.RayBackend


def dumps(obj: object) -> bytes:
    return bytes(cloudpickle.dumps(obj))  # type: ignore[no-untyped-call]


def flowers_loader(app: ClientApp) -> Any:
    """The shape of Flower's loader (``vce_api.start_vce``'s nested ``_load``): a closure, pickled by value."""
    run, app_dir = {"fab_id": "", "fab_version": "", "fab_hash": "x" * 64}, "/tmp/app"

    def _load() -> ClientApp:
        if app:
            return app
        raise ValueError(f"no app in {app_dir} for {run}")

    return _load


class NoActors:
    """Stands in for Flower's actor pool (building one starts Ray actors)."""

    actors_capacity = 0
    num_actors = 0

    def __init__(self, **_: Any) -> None:
        pass

    def add_actors_to_pool(self, _: int) -> None:
        pass


def test_the_backend_is_wrapped_as_this_flower_has_it() -> None:
    assert supported()


def test_the_backend_resolves_flowers_loader_once_and_sends_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raybackend, "BasicActorPool", NoActors)
    app = make_client_app(require_protection=False)
    calls: list[int] = []

    def loader() -> ClientApp:
        calls.append(1)
        loaded: ClientApp = flowers_loader(app)()
        return loaded

    with app_by_reference() as installed:
        assert installed
        backend = raybackend.RayBackend.__new__(raybackend.RayBackend)  # what vce_api's backend_fn builds
        backend.client_resources, backend.actor_kwargs = {"num_cpus": 1}, {}
        backend.build(loader)
    assert isinstance(backend, FlowerBackend) and calls == [1]
    assert isinstance(backend.app_fn, LoadedApp) and backend.app_fn() is app
    sent = dumps(backend.app_fn)  # what process_message ships with every message
    assert len(sent) < len(dumps(flowers_loader(app))) / 2, (len(sent), len(dumps(flowers_loader(app))))
    assert cloudpickle.loads(sent)() is cloudpickle.loads(sent)()  # the site app: rebuilt once per process


def test_flowers_backend_comes_back_after_the_block() -> None:
    with app_by_reference() as installed:
        assert installed and raybackend.RayBackend is not FlowerBackend
        assert issubclass(raybackend.RayBackend, FlowerBackend)
        with app_by_reference() as nested:  # a second simulation at once keeps Flower's loader
            assert not nested
    assert raybackend.RayBackend is FlowerBackend
    with pytest.raises(RuntimeError), app_by_reference():
        raise RuntimeError("the engine failed")
    assert raybackend.RayBackend is FlowerBackend
