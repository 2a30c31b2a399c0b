"""Tests that drive the running system through a real Kafka-protocol broker."""
