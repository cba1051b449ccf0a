"""Property-based requests from the served OpenAPI document (schemathesis): no operation answers 5xx.

Every operation of ``/openapi.json`` gets generated requests, both ones that
fit the schema and ones that do not (schemathesis' positive and negative
modes), through the ASGI transport with a valid admin key, so the admin route
is reached rather than refused with 401. Examples are bounded (and
derandomized, so a failure reproduces) to keep the test well under a minute on
two cores.

The schema is loaded inside the test and each operation's hypothesis strategy
is driven directly, rather than through ``schemathesis.pytest.from_fixture``:
that loader reads a private pytest attribute that pytest 9 removed.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from lifecycle.registry import Registry, VersionRecord
from serving.app import create_app
from serving.guards.keys import create_key
from serving.settings import ServingSettings

MAX_EXAMPLES = 30
EXPECTED_OPERATIONS = {
    "GET /healthz", "GET /metrics", "GET /v1/models", "POST /v1/models/{name}/predict",
    "POST /v1/admin/keys/{key_id}/revoke",
}


def test_no_operation_answers_5xx(registry: Registry, published: VersionRecord) -> None:
    settings_ = ServingSettings(max_instances=16, max_body_bytes=8192, quota_burst=100_000, quota_rate=1000.0,
                                feature_ranges={"demo": {"f0": (-100.0, 100.0)}})
    app = create_app(registry, settings_)
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
        def no_server_error(case: schemathesis.Case) -> None:
            response = case.call_and_validate(headers=headers, checks=[not_a_server_error])
            called[label] = called.get(label, 0) + 1
            statuses.setdefault(label, set()).add(response.status_code)

        try:
            no_server_error()
        except Unsatisfiable:
            continue  # a mode that cannot generate anything here (an operation without parameters)
        except Exception as exc:
            exc.add_note(f"operation: {label}")
            raise
    assert 200 in statuses["POST /v1/models/{name}/predict (positive, demo)"]  # the model itself is reached
    assert called.get("POST /v1/models/{name}/predict (positive)", 0) >= 10
    assert called.get("POST /v1/models/{name}/predict (negative)", 0) >= 10
