"""Actors are identities (OS user, approver or site key fingerprint, service), never free strings (issue 14, 6)."""

from __future__ import annotations

import getpass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifecycle.audit import actors
from lifecycle.audit.actors import LEGACY, MAX_LENGTH, Identity

FINGERPRINT = "3fa4c2d1e0b9a8f7" + "0" * 48


@pytest.mark.parametrize(("identity", "text"), [
    (actors.user("alice"), "user:alice"),
    (actors.approver(FINGERPRINT, "alice"), "approver:alice/ed25519:3fa4c2d1e0b9a8f7"),
    (actors.site("st-marys", "AB12CD34EF56A7B8FFFF"), "site:st-marys/key:ab12cd34ef56a7b8"),
    (actors.service("serve"), "service:serve"),
])
def test_canonical_form_round_trips(identity: Identity, text: str) -> None:
    assert str(identity) == text and Identity.parse(text) == identity


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@+-", min_size=1, max_size=64)
hexes = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@given(kind=st.sampled_from(["user", "service", "approver", "site"]), name=names, fingerprint=hexes)
def test_every_identity_fits_the_column_and_parses_back(kind: str, name: str, fingerprint: str) -> None:
    make = {"user": lambda: actors.user(name), "service": lambda: actors.service(name),
            "approver": lambda: actors.approver(fingerprint, name), "site": lambda: actors.site(name, fingerprint)}
    identity = make[kind]()
    text = str(identity)
    assert len(text) <= MAX_LENGTH
    assert Identity.parse(text) == identity and identity.kind == kind


def test_unsafe_names_are_cleaned_not_refused() -> None:
    assert str(actors.user("CORP\\bob smith")) == "user:CORP_bob_smith"
    assert len(str(actors.approver(FINGERPRINT, "x" * 500))) <= MAX_LENGTH
    assert str(actors.service("_hidden")) == "service:x_hidden"


@pytest.mark.parametrize("bad", [("user", ""), ("user", "a/b"), ("approver", "alice"), ("site", "s", "not-hex"),
                                 ("service", "serve", "3fa4c2d1e0b9a8f7"), ("robot", "r2")])
def test_invalid_identities_are_refused(bad: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        Identity(*bad)


@pytest.mark.parametrize(("text", "resolved"), [
    ("cli:alice", "user:alice"),
    ("cli", "user:unknown"),
    ("coordinator", "service:coordinator"),
    ("serve", "service:serve"),
    ("serving:extraction-guard", "service:serving-extraction-guard"),
])
def test_legacy_strings_still_parse(text: str, resolved: str) -> None:
    identity = Identity.parse(text)
    assert identity.kind == LEGACY and str(identity) == text  # old rows are read as they are, never rewritten
    assert str(identity.resolved()) == resolved
    assert "before identities were kept" in identity.describe()


@pytest.mark.parametrize("text", ["apikey:k123", "user:", "approver:alice", "site:a/key:zz", "x" * 200, ""])
def test_anything_else_is_legacy_and_never_raises(text: str) -> None:
    identity = Identity.parse(text)
    assert identity.kind == LEGACY and len(str(identity)) <= MAX_LENGTH and identity.describe()


def test_current_user_comes_from_the_os(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    assert actors.actor() == "user:alice"

    def no_name() -> str:
        raise OSError("no passwd entry")

    monkeypatch.setattr(getpass, "getuser", no_name)
    monkeypatch.setattr("os.getuid", lambda: 1000)
    assert str(actors.current_user()) == "user:uid-1000"


def test_an_identity_names_the_key_to_check() -> None:
    approver = actors.approver(FINGERPRINT, "alice")
    assert approver.matches(FINGERPRINT.upper()) and not approver.matches("f" * 64)
    assert approver.describe() == "approver alice (signing key 3fa4c2d1e0b9a8f7)"
