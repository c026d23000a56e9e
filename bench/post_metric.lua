-- wrk script for POST /api/metrics: one valid JSON point per request (bench/run.sh).
-- The type is bench_single, apart from the batch data's type, so the summaries the harness
-- measures see only the batch data. Responses are not inspected here (a `response` hook
-- would slow wrk down for this run only and skew the ratio against /health/live): run.sh
-- reads wrk's own "Non-2xx or 3xx responses" line and checks the rows stored in PostgreSQL.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format(
   '{"timestamp":"%s","value":75.5,"type":"bench_single","tags":{"host":"bench-1"}}',
   os.date("!%Y-%m-%dT%H:%M:%SZ"))
