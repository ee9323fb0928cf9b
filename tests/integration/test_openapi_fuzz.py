"""schemathesis against the OpenAPI document of ``notifier api`` (issue 9): generated
requests, valid and invalid, to every operation, with a key of every scope, find no
5xx. Bounded by a count: EXAMPLES per operation and mode, derandomized, never by a
time (how fast it runs depends on the machine's load; speed belongs in the benchmark)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from notifier_simulators.local import LocalProviders
from schemathesis import GenerationMode

from notifier.app import Notifier
from notifier.store import Database
from notifier.store.apikeys import SCOPES, ApiKeys
from notifier.web.api import create_api
from tests.support import ServedApi, make_settings

pytestmark = pytest.mark.integration

EXAMPLES = 25  # per operation and mode
# An endless server-sent event stream: a request to it never "finishes".
SKIPPED = {("GET", "/v1/inbox/{account_id}/stream")}


@pytest.fixture
def providers() -> Iterator[LocalProviders]:
    with LocalProviders() as local:
        yield local


def test_generated_requests_find_no_server_error(
    pg_url: str, pg_database: Database, providers: LocalProviders
) -> None:
    key = ApiKeys(pg_database).create("fuzz", list(SCOPES), [])
    submitted: list[bytes] = []
    app = Notifier(
        make_settings(
            database_url=pg_url,
            api={"rate_per_s": 1e6, "burst": 1_000_000},  # the fuzzer is not the subject
            **providers.settings_overrides(),
        )
    )
    started = time.monotonic()
    failures: list[str] = []
    calls = 0
    unsatisfiable: list[str] = []
    with ServedApi(create_api(app, submit=lambda body, _submitter: submitted.append(body))) as api:
        schema = schemathesis.openapi.from_url(f"{api.base_url}/openapi.json")
        session = requests.Session()
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 10
        for operation in operations:
            if (operation.method.upper(), operation.path) in SKIPPED:
                continue
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                strategy = operation.as_strategy(
                    generation_mode=mode, headers={"Authorization": f"Bearer {key}"}
                )

                @settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=strategy)
                def call(case: schemathesis.Case) -> None:
                    nonlocal calls
                    response = case.call(base_url=api.base_url, session=session, timeout=10)
                    calls += 1
                    if response.status_code >= 500:
                        failures.append(
                            f"{response.status_code} {case.method} {case.formatted_path} "
                            f"query={case.query!r} body={case.body!r}"[:400]
                        )

                try:
                    call()
                except Unsatisfiable:
                    # No invalid request exists (e.g. a lone string in the path).
                    assert mode is GenerationMode.NEGATIVE, operation.path
                    unsatisfiable.append(f"{operation.method.upper()} {operation.path}")
    app.close()
    assert calls >= 10 * len(operations)
    print(f"{calls} requests to {len(operations)} operations in {time.monotonic() - started:.1f}s")
    assert not failures, "server errors:\n" + "\n".join(failures[:20])
