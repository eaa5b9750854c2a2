"""Schemathesis hooks for `.ci/run`.

schemathesis sends the same schema-valid `Idempotency-Key` with different bodies, which Gatehouse rightly answers
with 422 `idempotency_key_reused`; this hook gives every request that carries a valid key a fresh one, so the
positive-data check tests the body. Invalid keys (the negative checks) are left as generated.
"""

import uuid

import schemathesis


def _valid(key):
    return isinstance(key, str) and 1 <= len(key) <= 255 and all("!" <= c <= "~" for c in key)


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers
    if headers and "Authorization" in headers and _valid(headers.get("Idempotency-Key")):
        headers["Idempotency-Key"] = f"st-{uuid.uuid4()}"
