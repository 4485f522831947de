"""Property-based fuzzing of the live OpenAPI schema with Schemathesis (bounded: a fixed number
of generated cases per operation, ~1 minute in all).

Every operation of `/openapi.json` is called with schema-valid and schema-violating inputs
(positive and negative generation) against the ASGI app, authenticated as a real tenant.
The checks: no 5xx (`not_a_server_error`), every status code, content type, header and body
documented (`status_code_conformance`, `content_type_conformance`,
`response_headers_conformance`, `response_schema_conformance`), and invalid input refused /
valid input accepted (`negative_data_rejection`, `positive_data_acceptance`).
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks as st_checks  # noqa: E402

from tests.helpers import service as h  # noqa: E402

MAX_EXAMPLES = 30

CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_headers_conformance,
    st_checks.response_schema_conformance,
    st_checks.negative_data_rejection,
]


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory):
    from kdaudit.service.app import create_app
    from kdaudit.store import migrate

    root = tmp_path_factory.mktemp("fuzz")
    settings = h.embedded_settings(
        root,
        max_upload_bytes=64 * 1024,
        rate_limit_per_second=0,  # fuzzing sends hundreds of requests a second; limits: test_limits.py
        max_concurrent_audits_per_tenant=1000,
    )
    migrate.upgrade(settings.resolved_database_url)
    settings.resolved_storage_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    import kdaudit.distill.data  # noqa: F401  (the upload route imports torch on first use: not in a timed call)
    import kdaudit.models.registry  # noqa: F401
    key = h.new_key(settings, "fuzzer")
    return {"app": app, "key": key, "settings": settings}


@pytest.fixture(scope="module")
def api_schema(fuzz_env):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_env["app"])


# The selftest routes start a training job on a worker (operators only): fuzzing them
# 30 times would only repeat one request; tests/test_selftest.py calls it through the API
schema = schemathesis.pytest.from_fixture("api_schema").exclude(path_regex=r"^/v1/selftest")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases every run: CI is reproducible
    database=None,
)
def test_api_fuzz(case, fuzz_env):
    # uploads that reach the checkpoint loader start a child process (~seconds on a busy CPU)
    case.call_and_validate(headers={"Authorization": f"Bearer {fuzz_env['key']}"}, checks=CHECKS, timeout=60)


def test_every_error_is_documented_as_problem_json(fuzz_env):
    from fastapi.testclient import TestClient

    with TestClient(fuzz_env["app"]) as c:
        spec = c.get("/openapi.json").json()
    assert "ProblemDoc" in spec["components"]["schemas"]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            if path.startswith("/v1"):
                assert {"401", "422", "429"} <= codes, (method, path, codes)
            for code, resp in op["responses"].items():
                if code[0] in "45":
                    assert list(resp["content"]) == ["application/problem+json"], (method, path, code)
