"""The dedicated secure sum of integer vectors, in-process: exact sums, dropouts, and the sites' own checks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from privacy.he import create_federation_keys
from privacy.secagg.messages import MASKED_INPUT, RECORD_KEY, header_of
from privacy.secure_sum import Bounds, SecureSumError, answer, secure_sum
from privacy.secure_sum.wire import RECORD, integer_config
from tests.privacy.secagg.harness import LocalGrid

TYPE = "query.sum"
LENGTH = 50


def _vector(node: int) -> np.ndarray:
    return np.random.default_rng(node % 2**32).integers(-1000, 100_000, size=LENGTH)


def _app() -> ClientApp:
    app = ClientApp()

    @app.query("sum")
    def handler(msg: Message, context: Context) -> Message:
        return answer(msg, context, lambda bounds: _vector(context.node_id), state_key="test-sum")

    return app


def _grid(n: int, secret: Path | None = None) -> LocalGrid:
    grid = LocalGrid(_app(), n)
    if secret is not None:
        for context in grid.contexts.values():
            context.node_config["he-secret-context"] = str(secret)
    return grid


def test_secagg_sum_is_exact_and_survives_a_dropout() -> None:
    grid = _grid(6)
    nodes = grid.get_node_ids()
    result = secure_sum(grid, nodes, LENGTH, mechanism="secagg+", message_type=TYPE, extra={}, timeout=5.0)
    assert result.contributors == tuple(sorted(nodes))
    assert np.array_equal(result.total, sum(_vector(n) for n in nodes))
    assert result.bounds.min_contributors == integer_config(6).threshold

    grid = _grid(6)
    nodes = grid.get_node_ids()
    lost = nodes[2]
    grid.silence = lambda m: (m.metadata.dst_node_id == lost and RECORD_KEY in m.content
                              and header_of(m.content[RECORD_KEY]).stage == MASKED_INPUT)
    result = secure_sum(grid, nodes, LENGTH, mechanism="secagg+", message_type=TYPE, extra={}, timeout=5.0)
    assert lost not in result.contributors and len(result.contributors) == 5
    assert np.array_equal(result.total, sum(_vector(n) for n in nodes if n != lost))


def test_too_many_dropouts_release_nothing() -> None:
    grid = _grid(5)
    nodes = grid.get_node_ids()
    grid.silence = lambda m: m.metadata.dst_node_id in nodes[:3] and m.content[RECORD]["stage"] == MASKED_INPUT
    with pytest.raises(SecureSumError, match="aborted"):
        secure_sum(grid, nodes, LENGTH, mechanism="secagg+", message_type=TYPE, extra={}, timeout=5.0)
    with pytest.raises(SecureSumError, match="at least 3 sites"):
        secure_sum(grid, nodes[:2], LENGTH, mechanism="secagg+", message_type=TYPE, extra={}, timeout=5.0)


def test_a_site_refuses_bounds_the_protocol_does_not_keep() -> None:
    """A coordinator promising sums of more sites than SecAgg+'s threshold gets no payload."""
    grid = _grid(5)
    nodes = grid.get_node_ids()
    send = grid.send_and_receive

    def lying(messages: object, *, timeout: float | None = None) -> list[Message]:
        forged = []
        for m in messages:  # type: ignore[attr-defined]
            bounds = Bounds.from_record(m.content[RECORD])
            m.content[RECORD] = replace(bounds, min_contributors=5).to_record()
            forged.append(m)
        return send(forged, timeout=timeout)

    grid.send_and_receive = lying  # type: ignore[method-assign]
    with pytest.raises(SecureSumError):
        secure_sum(grid, nodes, LENGTH, mechanism="secagg+", message_type=TYPE, extra={}, timeout=5.0)
    masked = [m for m in grid.received if not m.has_error() and m.content.array_records]
    assert masked == [] and any("promised sums of 5" in m.error.reason for m in grid.received if m.has_error())


def test_ckks_sum_is_exact_and_sites_decrypt_only_a_full_sum(tmp_path: Path) -> None:
    secret, public = create_federation_keys(tmp_path / "sites", tmp_path / "coordinator")
    grid = _grid(3, secret)
    nodes = grid.get_node_ids()
    result = secure_sum(grid, nodes, LENGTH, mechanism="ckks", message_type=TYPE, extra={}, timeout=5.0,
                        he_public_context=public)
    assert np.array_equal(result.total, sum(_vector(n) for n in nodes)) and result.contributors == tuple(nodes)
    # the coordinator saw ciphertexts and the one decrypted sum, never a vector of one site
    plain = [m for m in grid.received if "sum" in m.content.array_records]
    assert len(plain) == 1

    grid = _grid(3, secret)
    grid.silence = lambda m: m.metadata.dst_node_id == nodes[0]
    with pytest.raises(SecureSumError, match="fewer than the 3"):
        secure_sum(grid, grid.get_node_ids(), LENGTH, mechanism="ckks", message_type=TYPE, extra={}, timeout=5.0,
                   he_public_context=public)
    assert not any("sum" in m.content.array_records for m in grid.received if m.has_content())


def test_a_ckks_site_refuses_to_decrypt_a_sum_below_its_floor(tmp_path: Path) -> None:
    """A coordinator claiming a 1-site sum (to read one site's vector) gets no decryption."""
    secret, public = create_federation_keys(tmp_path / "sites", tmp_path / "coordinator")
    grid = _grid(3, secret)
    send = grid.send_and_receive

    def lying(messages: object, *, timeout: float | None = None) -> list[Message]:
        forged = []
        for m in messages:  # type: ignore[attr-defined]
            if m.content[RECORD]["stage"] == "decrypt":
                m.content[RECORD] = ConfigRecord({**dict(m.content[RECORD]), "contributors": 1})
            forged.append(m)
        return send(forged, timeout=timeout)

    grid.send_and_receive = lying  # type: ignore[method-assign]
    with pytest.raises(SecureSumError, match="no contributing site decrypted"):
        secure_sum(grid, grid.get_node_ids(), LENGTH, mechanism="ckks", message_type=TYPE, extra={}, timeout=5.0,
                   he_public_context=public)
    refusals = [m.error.reason for m in grid.received if m.has_error()]
    assert len(refusals) == 3 and all("refusing to decrypt a sum of 1" in r for r in refusals)
