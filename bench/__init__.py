"""The side-by-side benchmark (`scripts/bench`): the orders service measured next to
the raw-psycopg floor of the same work, in one run, on throwaway PostgreSQL databases.

Modules: `__main__` (the run order, the report, the cleanup), `context` (what every phase is
given), the phases `seeds`, `throughput`, `latencies` (with `overhead`), `memory`, `replica`,
`events`, `tracing`, `django` (with `django_rows` and `bare`); what they run against: `stack`
(servers, Envoy), `databases`, `procs` (RSS and CPU from /proc), `tools` (wrk, h2load); `rows`
(the seed's rows, for the floor), `floor` (raw psycopg: COPY and hand-written queries), `load`
(a multi-process gRPC load client), `stats` (samples and percentiles), `report` (the table and
its targets).
"""
