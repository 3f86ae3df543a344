"""Helpers shared by tests and benchmarks (loopback servers, fixtures)."""
