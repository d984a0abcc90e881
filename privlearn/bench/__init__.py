"""Benchmarks: each prints a table and writes JSON; never part of the test suite."""
