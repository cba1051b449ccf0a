"""The site mod: encrypts only, never leaks the clear update, and decrypts only aggregates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from privacy.he import DecryptionRefused, HEKeyError, HEPayloadError, ckks_mod, create_backend, create_federation_keys
from privacy.he.codec import ciphertext_record, read_ciphertext
from privacy.he.instruction import HEInstruction
from privacy.updates import flatten, weighted_payload

from .conftest import examples_of, fake_train, global_arrays, node_context, site_delta


def instruction(key: str, **changes: object) -> HEInstruction:
    base = HEInstruction("encrypt", 1, 10.0, 1000.0, "examples", 2, key)
    return HEInstruction(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def train_message(he: HEInstruction | None, node: int = 1) -> Message:
    content = RecordDict({"arrays": global_arrays(), "config": ConfigRecord({"server-round": 1})})
    if he is not None:
        content["he"] = he.to_record()
    return Message(content, dst_node_id=node, message_type=MessageType.TRAIN)


def encrypted_reply(secret: Path, key: str, node: int = 1):  # type: ignore[no-untyped-def]
    context = node_context(node, secret)
    return context, ckks_mod(train_message(instruction(key), node), context, fake_train)


def test_encrypt_replies_with_ciphertext_and_metadata_only(federation_keys: tuple[Path, Path]) -> None:
    secret, public = federation_keys
    site = create_backend("ckks", secret, role="site")
    _, reply = encrypted_reply(secret, site.key_id)
    assert set(reply.content.keys()) == {"ciphertext", "he", "metrics", "site"}
    assert all(reply.content.array_records["ciphertext"][k].dtype == "uint8"
               for k in reply.content.array_records["ciphertext"].keys())
    length = int(reply.content.config_records["he"]["length"])  # type: ignore[arg-type]
    payload = site.decrypt(read_ciphertext(site, reply.content.array_records["ciphertext"], length))
    arrays = global_arrays()
    delta = np.concatenate([d.ravel() for d in site_delta(1, 1, arrays).values()]).astype(np.float64)
    expected = np.concatenate([weighted_payload(delta, examples_of(1)), [1.0]])
    assert np.allclose(payload, expected, atol=1e-6)
    assert flatten(arrays)[0].size + 2 == length


def test_train_without_he_record_is_refused(federation_keys: tuple[Path, Path]) -> None:
    with pytest.raises(HEPayloadError, match="no 'he'"):
        ckks_mod(train_message(None), node_context(1, federation_keys[0]), fake_train)


def test_other_message_types_pass_through(federation_keys: tuple[Path, Path]) -> None:
    msg = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1, message_type=MessageType.EVALUATE)
    answer = Message(RecordDict({"metrics": MetricRecord({"x": 1.0})}), reply_to=msg)
    assert ckks_mod(msg, node_context(1, None), lambda m, c: answer) is answer


def test_missing_secret_context_and_foreign_key_are_refused(federation_keys: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    with pytest.raises(HEKeyError, match="no secret context"):
        ckks_mod(train_message(instruction("x")), node_context(1, None), fake_train)
    with pytest.raises(HEKeyError, match="secret key"):  # a site given the public context
        ckks_mod(train_message(instruction("x")), node_context(1, federation_keys[1]), fake_train)
    other, _ = create_federation_keys(tmp_path / "s", tmp_path / "c")
    key = create_backend("ckks", federation_keys[0], role="site").key_id
    with pytest.raises(HEKeyError, match="same create_federation_keys"):
        ckks_mod(train_message(instruction(key)), node_context(1, other), fake_train)


def test_secret_context_from_train_config_when_node_config_lacks_it(federation_keys: tuple[Path, Path]) -> None:
    key = create_backend("ckks", federation_keys[0], role="site").key_id
    msg = train_message(instruction(key))
    msg.content["config"]["he-secret-context"] = str(federation_keys[0])
    assert "ciphertext" in ckks_mod(msg, node_context(1, None), fake_train).content


def decrypt_message(backend, key: str, vector: np.ndarray, contributors: int, node: int = 1,
                    **changes: object) -> Message:  # type: ignore[no-untyped-def]
    he = instruction(key, **changes).for_decryption(contributors, vector.size)
    content = RecordDict({"he": he.to_record(), "ciphertext": ciphertext_record(backend, backend.encrypt(vector))})
    return Message(content, dst_node_id=node, message_type=MessageType.TRAIN)


@pytest.fixture
def decrypting(federation_keys: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    secret, public = federation_keys
    coordinator = create_backend("ckks", public, role="coordinator")
    context, _ = encrypted_reply(secret, coordinator.key_id)  # the site took part in round 1
    return context, coordinator


def test_decrypts_an_aggregate_once(decrypting) -> None:  # type: ignore[no-untyped-def]
    context, coordinator = decrypting
    vector = np.array([1.5, -2.0, 30.0, 3.0])  # [Σ wΔ, Σ w, count]
    reply = ckks_mod(decrypt_message(coordinator, coordinator.key_id, vector, 3), context, fake_train)
    assert np.allclose(reply.content.array_records["sum"]["payload"].numpy(), vector[:-1], atol=1e-9)
    with pytest.raises(DecryptionRefused, match="second decryption"):
        ckks_mod(decrypt_message(coordinator, coordinator.key_id, vector, 3), context, fake_train)


def test_refuses_fewer_than_min_sites(decrypting) -> None:  # type: ignore[no-untyped-def]
    context, coordinator = decrypting
    with pytest.raises(DecryptionRefused, match="at least 2"):
        ckks_mod(decrypt_message(coordinator, coordinator.key_id, np.array([1.0, 1.0, 1.0]), 1, min_sites=1),
                 context, fake_train)
    context.node_config["he-min-sites"] = 5  # the site's own floor wins over the request
    with pytest.raises(DecryptionRefused, match="at least 5"):
        ckks_mod(decrypt_message(coordinator, coordinator.key_id, np.array([1.0, 1.0, 3.0]), 3), context, fake_train)


def test_refuses_a_forged_contributor_count(decrypting) -> None:  # type: ignore[no-untyped-def]
    context, coordinator = decrypting
    one_site = np.array([0.4, 0.2, 12.0, 1.0])  # a single site's payload, claimed as an aggregate of 3
    with pytest.raises(DecryptionRefused, match="counter"):
        ckks_mod(decrypt_message(coordinator, coordinator.key_id, one_site, 3), context, fake_train)


def test_refuses_a_round_it_did_not_contribute_to(decrypting) -> None:  # type: ignore[no-untyped-def]
    context, coordinator = decrypting
    with pytest.raises(DecryptionRefused, match="did not contribute"):
        ckks_mod(decrypt_message(coordinator, coordinator.key_id, np.array([1.0, 3.0, 3.0]), 3, server_round=7),
                 context, fake_train)


def test_a_weight_above_max_weight_is_refused(federation_keys: tuple[Path, Path]) -> None:
    key = create_backend("ckks", federation_keys[0], role="site").key_id
    with pytest.raises(HEPayloadError, match="max-weight"):  # node 1 has 17 examples
        ckks_mod(train_message(instruction(key, max_weight=16.0)), node_context(1, federation_keys[0]), fake_train)
