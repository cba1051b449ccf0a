"""Node-key sync with the SuperLink when another sync registered the same key first (Flower answers HTTP 412).

The coordinator service syncs in a loop and on demand (``sync_now``), and an
operator's command in another process can sync too: between one sync's
listing and its ``RegisterNode`` another may register the key. The stand-in
control client answers exactly as Flower's Control API does: a key already in
use is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from coordinator.superlink import sync_nodes


class AlreadyInUse(Exception):
    """What Flower's Control API raises for a key already registered (412 Precondition Failed)."""


@dataclass
class Control:
    nodes: dict[str, int] = field(default_factory=dict)
    racer: str | None = None  # a key "another sync" registers right before ours

    def ListNodes(self, _request: Any) -> Any:  # noqa: N802 - Flower's method name
        infos = [SimpleNamespace(public_key=key.encode(), node_id=nid, unregistered_at="")
                 for key, nid in self.nodes.items()]
        return SimpleNamespace(nodes_info=infos)

    def RegisterNode(self, request: Any) -> Any:  # noqa: N802
        key = request.public_key.decode().strip()
        if self.racer == key:
            self.nodes[key], self.racer = len(self.nodes) + 1, None
        if key in self.nodes:
            raise AlreadyInUse("412 Precondition Failed: public key already in use")
        self.nodes[key] = len(self.nodes) + 1
        return SimpleNamespace(node_id=self.nodes[key])


@dataclass
class Sites:
    keys: list[tuple[str, bool, str]]

    def node_keys(self) -> list[tuple[str, bool, str]]:
        return self.keys


PEM = {name: f"-----BEGIN PUBLIC KEY-----\n{name}\n-----END PUBLIC KEY-----\n" for name in ("a", "b")}


def test_a_key_another_sync_registered_first_is_taken_as_registered() -> None:
    control = Control(racer=PEM["a"].strip())
    added, removed = sync_nodes(control, Sites([("a", True, PEM["a"]), ("b", True, PEM["b"])]))  # type: ignore[arg-type]
    assert (added, removed) == (["b"], []) and set(control.nodes) == {PEM["a"].strip(), PEM["b"].strip()}


def test_a_refusal_for_any_other_reason_is_raised() -> None:
    class Refusing(Control):
        def RegisterNode(self, request: Any) -> Any:  # noqa: N802
            raise AlreadyInUse("400 invalid public key")

    with pytest.raises(AlreadyInUse, match="invalid public key"):
        sync_nodes(Refusing(), Sites([("a", True, PEM["a"])]))  # type: ignore[arg-type]
