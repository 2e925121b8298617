"""Schemathesis over the app's own OpenAPI schema, against the real server: never a 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server_helpers import engine_with, running_server


def test_no_server_errors_for_generated_requests(engine):
    # Short answers keep the many valid requests quick; the limits are the server's own.
    small = engine_with(engine, max_new_tokens=4, max_new_tokens_limit=8)
    with running_server(small, request_timeout=20) as (url, _):
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/models", "/metrics"}
        strategy = st.one_of([op.as_strategy() for op in operations])
        seen = []

        @given(case=strategy)
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(base_url=url, timeout=30)
            seen.append((case.path, response.status_code))
            assert response.status_code < 500, (
                case.method,
                case.path,
                response.status_code,
                response.text[:300],
            )

        check()
    chat = [status for path, status in seen if path == "/v1/chat/completions"]
    assert len(chat) > 20 and 400 in chat
