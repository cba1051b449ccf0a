"""Key handling: file modes, role checks, one fingerprint per federation."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from privacy.he import HEKeyError, create_backend, create_federation_keys, load_coordinator_context, load_site_context
from privacy.he.keys import key_id


def test_secret_context_is_owner_only_and_public_holds_no_secret(federation_keys: tuple[Path, Path]) -> None:
    secret, public = federation_keys
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert secret.parent != public.parent
    coordinator = load_coordinator_context(public)
    assert not coordinator.is_private()
    assert not coordinator.has_galois_keys() and not coordinator.has_relin_keys()
    assert key_id(coordinator) == key_id(load_site_context(secret))


def test_coordinator_refuses_a_secret_context(federation_keys: tuple[Path, Path]) -> None:
    with pytest.raises(HEKeyError, match="secret key"):
        load_coordinator_context(federation_keys[0])
    with pytest.raises(HEKeyError, match="secret key"):
        create_backend("ckks", federation_keys[0], role="coordinator")


def test_site_refuses_a_public_context(federation_keys: tuple[Path, Path]) -> None:
    with pytest.raises(HEKeyError, match="no secret key"):
        load_site_context(federation_keys[1])


def test_missing_and_corrupt_contexts_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(HEKeyError, match="cannot read"):
        load_site_context(tmp_path / "absent.bin")
    (tmp_path / "junk.bin").write_bytes(b"junk")
    with pytest.raises(HEKeyError, match="not a TenSEAL context"):
        load_coordinator_context(tmp_path / "junk.bin")


def test_site_and_coordinator_dirs_must_differ(tmp_path: Path) -> None:
    with pytest.raises(HEKeyError, match="must differ"):
        create_federation_keys(tmp_path / "same", tmp_path / "same")


def test_each_call_makes_a_new_key(tmp_path: Path, federation_keys: tuple[Path, Path]) -> None:
    _, public = create_federation_keys(tmp_path / "s", tmp_path / "c")
    assert key_id(load_coordinator_context(public)) != key_id(load_coordinator_context(federation_keys[1]))
