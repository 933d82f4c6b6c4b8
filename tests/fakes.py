"""The in-process Grid of :mod:`bench.inprocess` under its test name ``FakeGrid``.

It routes Messages into our ClientApp handlers and records each one, so tests
assert wire contracts; it is the one place that touches Flower internals.
"""

from __future__ import annotations

from bench.inprocess import ClientFn, InProcessGrid

FakeGrid = InProcessGrid

__all__ = ["ClientFn", "FakeGrid"]
