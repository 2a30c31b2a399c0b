"""Checks of the Docker and Compose files, without a Docker engine."""
