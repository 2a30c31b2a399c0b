"""Broker-free tests: the core, the edge's pure parts, the database projections."""
