"""Benchmarks of the pipeline, side by side with the raw broker and bare Faust: `make bench`.

`python -m bench` runs everything on one broker (the embedded Tansu unless `--broker-url`),
prints a table, and writes `bench/results.json` and `bench/chart.png`. Not part of `make test`.

Modules: `workload` (the requests and reference data sent), `harness` (broker, topics,
filling, reading outputs, worker subprocesses), `passthrough` (the raw aiokafka limit),
`bare_faust` (the bare Faust forwarder), `timed_worker` (the worker, logging when its tables
are recovered), `suites` (one function per measured row), `report` (table, JSON, chart),
`profile` (pyinstrument on the handlers, py-spy on a worker).
"""
