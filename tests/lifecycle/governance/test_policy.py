"""Parsing a policy: strict, so an unknown or malformed criterion is an error, never a pass (issue 14, points 1, 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle.errors import ConfigurationError
from lifecycle.governance.criteria import CRITERIA
from lifecycle.governance.policy import DEFAULT_POLICY, digest, parse_policy
from tests.lifecycle.governance.sample import SAMPLE


def test_the_sample_declares_every_criterion() -> None:
    policy = parse_policy(SAMPLE, source="policy.toml")
    assert [key for key, _ in policy.criteria("production")] == [k for k in CRITERIA if k != "max-drift"]  # in order
    assert dict(policy.criteria("staging")) == {"min-accuracy": 0.9, "max-record-epsilon": 8.0,
                                                 "signature-verified": True, "max-drift": 0.2,
                                                 "consent-clean": True}
    assert policy.criteria("registered") == ()
    assert (policy.required_approvals("production"), policy.required_approvals("staging")) == (2, 0)
    assert (policy.on_taint, policy.sensitive_attribute, policy.digest) == ("replace", "f1", digest(SAMPLE))
    assert policy.declared_stages == ("staging", "production")
    assert policy.to_dict()["stages"]["production"]["required-approvals"] == 2


def test_the_default_policy_requires_signature_and_consent() -> None:
    for stage in ("staging", "production"):
        assert DEFAULT_POLICY.criteria(stage) == (("signature-verified", True), ("consent-clean", True))
    assert (DEFAULT_POLICY.version, DEFAULT_POLICY.on_taint, DEFAULT_POLICY.required_approvals("production")) == (
        None, "block", 0)


def test_a_boolean_criterion_set_to_false_is_not_required() -> None:
    policy = parse_policy("[production]\nwatermark-verified = false\nmin-accuracy = 1\n")
    assert policy.criteria("production") == (("min-accuracy", 1.0),)


@pytest.mark.parametrize(("document", "names"), [
    ("[staging]\nmin-acuracy = 0.9\n", ["min-acuracy", "policy.toml", "did you mean 'min-accuracy'", "known:"]),
    ("[prod]\nmin-accuracy = 0.9\n", ["unknown stage 'prod'", "[production]"]),
    ("sensitive_attribute = 'x'\n", ["unknown key 'sensitive_attribute'", "sensitive-attribute"]),
    ('[staging]\nmin-accuracy = "high"\n', ["min-accuracy = 'high'", "between 0 and 1", "known keys"]),
    ("[staging]\nmin-accuracy = true\n", ["min-accuracy = True", "between 0 and 1"]),
    ("[staging]\nmin-accuracy = 1.5\n", ["between 0 and 1"]),
    ("[staging]\nmax-record-epsilon = 0\n", ["max-record-epsilon", "above 0"]),
    ("[staging]\nmax-site-epsilon = inf\n", ["max-site-epsilon", "finite"]),
    ("[staging]\nmax-drift = -0.1\n", ["max-drift", "at least 0"]),
    ("[staging]\nconsent-clean = 1\n", ["consent-clean = 1", "true or false"]),
    ("[production]\nrequired-approvals = 2.5\n", ["required-approvals", "whole number"]),
    ("on-taint = 'ignore'\n", ["on-taint = 'ignore'", "block, replace"]),
    ("sensitive-attribute = ''\n", ["sensitive-attribute", "non-empty"]),
    ("staging = 3\n", ["'staging'", "must be a table"]),
    ("[production]\nmax-equalized-odds-difference = 0.1\n", ["needs a top-level sensitive-attribute"]),
    ("[staging\nmin-accuracy = 0.9\n", ["policy.toml is not valid TOML"]),
])
def test_a_bad_policy_is_one_line_naming_the_key_and_the_file(document: str, names: list[str]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_policy(document, source="policy.toml")
    message = str(caught.value)
    assert "\n" not in message and "policy.toml" in message
    for name in names:
        assert name in message, message


def test_an_unknown_stage_is_refused_when_asked_for() -> None:
    with pytest.raises(ConfigurationError, match="unknown stage 'prod'"):
        DEFAULT_POLICY.criteria("prod")


def test_the_sample_policy_of_the_docs_parses_and_declares_every_criterion() -> None:
    text = (Path(__file__).resolve().parents[3] / "docs" / "governance.md").read_text()
    section = text[text.index("## Policies and gates"):]
    document = section[section.index("```toml") + len("```toml\n"):]
    policy = parse_policy(document[:document.index("```")], source="docs/governance.md")
    declared = {key for stage in ("staging", "production") for key, _ in policy.criteria(stage)}
    assert declared == set(CRITERIA) and policy.required_approvals("production") == 2
    assert policy.sensitive_attribute == "mean radius"
