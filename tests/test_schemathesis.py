"""The served OpenAPI document and a real ``eventlog serve`` agree, on both backends.

Schemathesis generates requests from the document (valid ones, and invalid ones that the
server must refuse with a 4xx), with a fixed seed and a bounded number of cases, and fails
on any 5xx, an undocumented status, or a response that does not match its documented
content type, headers or schema.
"""

from __future__ import annotations

from collections.abc import Callable

import schemathesis
from conftest import Server
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]
CASES = 10  # per operation and generation mode


def test_the_served_document_matches_the_server(
    database_url: str, start_server: Callable[..., Server]
) -> None:
    server = start_server(database_url)
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    # Every described route but GET /openapi.json, which schemathesis leaves out.
    assert "POST /streams/{stream}/events" in {operation.label for operation in operations}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @seed(2026)
            @settings(
                max_examples=CASES,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=10)

            try:
                check()
            except Unsatisfiable:
                # Nothing to make invalid: /healthz and /readyz take no input at all.
                assert mode is GenerationMode.NEGATIVE
