"""The side-by-side benchmark (`scripts/bench`): the orders service measured next to
the raw-psycopg floor of the same work, in one run, on throwaway PostgreSQL databases.

Modules: `stack` (databases, server processes, Envoy, wrk), `rows` (the seed's rows, for the
floor), `floor` (raw psycopg: COPY and hand-written queries), `load` (a multi-process gRPC
load client), `stats` (samples and percentiles), `report` (the table and its targets),
`__main__` (the run).
"""
