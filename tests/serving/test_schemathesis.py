"""Property-based requests from the served OpenAPI document (schemathesis): the server keeps to its document.

Every operation of ``/openapi.json`` gets generated requests, both ones that
fit the schema and ones that do not (schemathesis' positive and negative
modes), through the ASGI transport with a valid admin key, so the admin route
is reached rather than refused with 401. Examples are bounded (and
derandomized, so a failure reproduces) to keep the test well under a minute on
two cores. Each answer must

- not be a 5xx (``not_a_server_error``);
- have a status the operation declares and a body of the declared schema
  (``status_code_conformance``, ``response_schema_conformance``): a 422 is
  ``ErrorBody``, as the server sends it;
- if it is an error, carry a code that docs/serving.md's table lists with
  that status (:func:`documented_error_code`: once, a non-JSON admin body got
  ``http_400``, which no table listed);
- if the request fit the schema, be accepted (:func:`schema_valid_is_accepted`):
  once, ``{"instances": [[]]}`` fit the document and got 422. The one
  refusal a schema-valid request may get is a value outside an operator's
  configured feature range, which the document does not carry.

:func:`test_malformed_bodies_get_documented_answers` adds the bodies a
generator does not write (not UTF-8, nested 100 000 deep, not JSON) to every
operation that takes a body.

The schema is loaded inside the test and each operation's hypothesis strategy
is driven directly, rather than through ``schemathesis.pytest.from_fixture``:
that loader reads a private pytest attribute that pytest 9 removed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from lifecycle.registry import Registry, VersionRecord
from serving.app import create_app
from serving.guards.keys import create_key
from serving.settings import ServingSettings

MAX_EXAMPLES = 30
EXPECTED_OPERATIONS = {
    "GET /healthz", "GET /metrics", "GET /v1/models", "POST /v1/models/{name}/predict",
    "POST /v1/admin/keys/{key_id}/revoke",
}
DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
RANGE_REFUSAL = "outside its configured range"


def documented_codes() -> set[tuple[int, str]]:
    """The (status, code) pairs of docs/serving.md's error table."""
    rows = re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", DOC.read_text(), flags=re.MULTILINE)
    assert len(rows) >= 8, "the error table of docs/serving.md was not found"
    return {(int(status), code) for status, code in rows}


DOCUMENTED = documented_codes()


def _error_code(response: Any) -> str | None:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def documented_error_code(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """An error answer carries ``{"error": {"code": ...}}`` with a code the docs list for its status."""
    if response.status_code < 400:
        return None
    code = _error_code(response)
    if (response.status_code, code) not in DOCUMENTED:
        raise AssertionError(f"{response.status_code} with code {code!r}, which docs/serving.md does not list")
    return None


def schema_valid_is_accepted(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """A request that fits the document is not refused as malformed (400/422), bar an operator's feature range."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code not in (400, 422):
        return None
    message = response.json()["error"]["message"]
    if RANGE_REFUSAL not in message:
        raise AssertionError(f"a request that fits the OpenAPI document got {response.status_code}: {message}")
    return None


CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, documented_error_code,
          schema_valid_is_accepted]


@pytest.fixture
def fuzz_settings() -> ServingSettings:
    return ServingSettings(max_instances=16, max_body_bytes=8192, quota_burst=100_000, quota_rate=1000.0,
                           feature_ranges={"demo": {"f0": (-100.0, 100.0)}})


def test_no_operation_strays_from_the_document(registry: Registry, published: VersionRecord,
                                                fuzz_settings: ServingSettings) -> None:
    app = create_app(registry, fuzz_settings)
    headers = {"Authorization": f"Bearer {create_key(registry, 'admin', 'fuzz').key}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert EXPECTED_OPERATIONS <= {f"{op.method.upper()} {op.path}" for op in operations}
    called: dict[str, int] = {}
    statuses: dict[str, set[int]] = {}
    runs = [(operation, mode, None) for operation in operations
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    # Random model names mostly meet 404: also aim the generator at the served model.
    runs += [(op, mode, {"name": "demo"}) for op in operations if "{name}" in op.path
             for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    for operation, mode, pinned in runs:
        label = f"{operation.method.upper()} {operation.path} ({mode.value}{', demo' if pinned else ''})"

        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=pinned))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def keeps_to_the_document(label: str, case: schemathesis.Case) -> None:
            response = case.call_and_validate(headers=headers, checks=CHECKS)
            called[label] = called.get(label, 0) + 1
            statuses.setdefault(label, set()).add(response.status_code)

        try:
            keeps_to_the_document(label)  # passed, not captured: the closure is made anew each iteration
        except Unsatisfiable:
            continue  # a mode that cannot generate anything here (an operation without parameters)
        except Exception as exc:
            exc.add_note(f"operation: {label}")
            raise
    assert 200 in statuses["POST /v1/models/{name}/predict (positive, demo)"]  # the model itself is reached
    assert called.get("POST /v1/models/{name}/predict (positive)", 0) >= 10
    assert called.get("POST /v1/models/{name}/predict (negative)", 0) >= 10


MALFORMED = {
    "not UTF-8": (b'{"version": "\xff"}', "application/json"),
    "deep": (b"[" * 100_000 + b"]" * 100_000, "application/json"),
    "not JSON": (b"version=2", "application/json"),
    "text": (b"version=2", "text/plain"),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_bodies_get_documented_answers(registry: Registry, published: VersionRecord, kind: str) -> None:
    """Every operation that takes a body answers a malformed one with a documented 4xx, with a key or without."""
    app = create_app(registry, ServingSettings(max_body_bytes=1024 * 1024))
    admin = {"Authorization": f"Bearer {create_key(registry, 'admin', 'fuzz').key}"}
    body, content_type = MALFORMED[kind]
    with_body = [(path, method) for path, operations in app.openapi()["paths"].items()
                 for method, operation in operations.items() if "requestBody" in operation]
    assert len(with_body) >= 5
    with TestClient(app) as client:
        for path, method in with_body:
            url = path.replace("{name}", "demo")
            for headers, expected in (({}, 401), (admin, 422)):
                response = client.request(method, url, content=body, headers={"Content-Type": content_type, **headers})
                where = f"{method.upper()} {path} ({kind}, {'admin key' if headers else 'no key'})"
                assert response.status_code == expected, where
                assert (expected, _error_code(response)) in DOCUMENTED, where
