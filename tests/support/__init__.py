"""Helpers shared by the integration tests: real servers started on loopback."""
