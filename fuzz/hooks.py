"""Schemathesis hooks for scripts/fuzz.sh (loaded through SCHEMATHESIS_HOOKS=hooks)."""

import uuid

import schemathesis
from hypothesis import strategies as st


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    # Generated Idempotency-Keys repeat (the same short strings come up again and again), and a
    # key reused with another body is a 422 by design. A valid key is therefore made unique just
    # before the request is sent, so that a schema-valid write must still be accepted; an
    # invalid key is sent as generated.
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and 1 <= len(key) <= 255 and all("!" <= c <= "~" for c in key):
        case.headers["Idempotency-Key"] = uuid.uuid4().hex


# The receivers take protocol messages (a snappy-compressed protobuf WriteRequest, an OTLP
# ExportMetricsServiceRequest) that a JSON Schema cannot describe: arbitrary bytes, the empty
# body included, exercise their decoders and limits.
schemathesis.openapi.media_type("application/x-protobuf", st.binary(max_size=4096))
