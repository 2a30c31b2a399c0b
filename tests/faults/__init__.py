"""Fault tests on Apache Kafka clusters of their own, and the secure lane's tests."""
