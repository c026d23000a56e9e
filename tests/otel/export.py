"""Exports known metrics with the real OpenTelemetry Python SDK over OTLP/HTTP (protobuf).

    python export.py ENDPOINT KEY RUN_ID [none|gzip]

ENDPOINT is the full URL of the metrics endpoint (…/v1/metrics); KEY is sent as
`Authorization: Bearer KEY`; RUN_ID names the resource (service.name = otel-test-RUN_ID)
so that the points of one run can be told from another's. Records, all with the attribute
route=/checkout:
  - counter   otel_test_requests: adds 3, 4 and 5 (total 12);
  - gauge     otel_test_queue_depth: sets 9, then 7.5 (last value 7.5);
  - histogram otel_test_latency: records 1, 2.5, 4 and 10 (count 4, sum 17.5);
then force_flush() and shutdown(). Exits 1 when any export did not succeed (the SDK only
logs a failed export), 0 otherwise. Temporality: the exporter's default, cumulative.
"""

import sys

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource


class RecordingExporter(OTLPMetricExporter):
    """The OTLP exporter, remembering the result of every export."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.results = []

    def export(self, metrics_data, timeout_millis=10_000, **kwargs):
        result = super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        self.results.append(result)
        return result


def main(argv):
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    endpoint, key, run_id = argv[1:4]
    compression = Compression(argv[4]) if len(argv) == 5 else Compression.NoCompression

    exporter = RecordingExporter(
        endpoint=endpoint,
        headers={"Authorization": f"Bearer {key}"},
        compression=compression,
        timeout=10,
    )
    # No periodic export happens before the explicit flush: the interval is longer than a run.
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=600_000)
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": f"otel-test-{run_id}"}),
    )
    meter = provider.get_meter("resilient-analytics.tests")
    attributes = {"route": "/checkout"}

    requests = meter.create_counter("otel_test_requests", unit="1")
    for amount in (3, 4, 5):
        requests.add(amount, attributes)

    queue_depth = meter.create_gauge("otel_test_queue_depth")
    queue_depth.set(9, attributes)
    queue_depth.set(7.5, attributes)

    latency = meter.create_histogram("otel_test_latency", unit="ms")
    for value in (1, 2.5, 4, 10):
        latency.record(value, attributes)

    flushed = provider.force_flush(timeout_millis=20_000)
    provider.shutdown(timeout_millis=20_000)

    results = exporter.results
    print(f"exports: {[result.name for result in results]}, flushed: {flushed}")
    if not flushed or not results or any(r is not MetricExportResult.SUCCESS for r in results):
        print("an export did not succeed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
