"""The site's ClientApp travels to Ray's actors as a token and its recipe, and is rebuilt once per process."""

from __future__ import annotations

import subprocess
import sys

import ray.cloudpickle as cloudpickle
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from client.app import SiteClientApp, make_client_app


def dumps(obj: object) -> bytes:
    """Pickle as Flower's Ray backend does (Ray's cloudpickle)."""
    return bytes(cloudpickle.dumps(obj))  # type: ignore[no-untyped-call]


def tagging_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    return call_next(msg, context)


def test_the_app_pickles_as_its_recipe_and_comes_back_as_one_object_per_process() -> None:
    app = make_client_app(require_protection=False, mods=[tagging_mod])
    assert isinstance(app, SiteClientApp)
    blob = dumps(lambda: app)  # what Flower's Ray backend sends with every message
    assert len(blob) < 2_000, len(blob)  # a full ClientApp by value is tens of kB of closures
    first, second = cloudpickle.loads(blob)(), cloudpickle.loads(blob)()
    assert first is second  # built once here, then reused
    assert first.recipe == {"require_protection": False, "mods": (tagging_mod,), "update_mods": ()}
    assert cloudpickle.loads(dumps(make_client_app())) is not first  # another app, another token


def test_a_fresh_process_rebuilds_the_same_app_from_the_recipe() -> None:
    blob = dumps(make_client_app(require_protection=False))
    code = ("import sys, ray.cloudpickle as cp; app = cp.loads(sys.stdin.buffer.read()); "
            "print(type(app).__name__, app.recipe['require_protection'], sorted(app._registered_funcs))")
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True).stdout.decode()
    assert out.split()[:2] == ["SiteClientApp", "False"]
    assert "train" in out and "evaluate" in out and "query" in out
