"""Benchmarks: scripts that print a table and write JSON; imported by nothing in the app."""
