"""Hosts on one machine: Linux network namespaces joined by veth pairs to a bridge.

Recipe from PLATFORM.md §6 (needs root and ``ip``): a bridge lives in its own
namespace; host ``i`` gets namespace ``<tag>-h<i>`` with address
``198.18.1.<i+1>/24`` (198.18.0.0/15 is reserved for benchmarking and stays off
the host's own subnet). Both ends of every connection must run inside
namespaces. ``tc ... tbf`` limits a host's egress (``netem`` is not available
here). Names carry the creating process's PID, and :meth:`Lab.down` deletes
every namespace it made, which also removes their veth pairs.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def namespaces_available() -> str | None:
    """``None`` if namespaces can be made here, else the reason they cannot."""
    probe = f"fzprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return f"cannot create network namespaces ({detail.strip()}); needs root and iproute2"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


@dataclass
class Lab:
    """``hosts`` namespaces on one bridge; use as a context manager."""

    hosts: int
    tag: str = field(default_factory=lambda: f"fz{os.getpid()}")
    made: list[str] = field(default_factory=list)

    def ns(self, i: int) -> str:
        return f"{self.tag}-h{i}"

    def addr(self, i: int) -> str:
        return f"198.18.1.{i + 1}"

    def dev(self, i: int) -> str:
        return f"v{self.tag[2:]}h{i}"[:15]  # interface names are at most 15 bytes

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        bridge = f"{self.tag}-br"
        _ip("netns", "add", bridge)
        self.made.append(bridge)
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for i in range(self.hosts):
            ns, dev, peer = self.ns(i), self.dev(i), f"{self.dev(i)}b"[:15]
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("link", "add", dev, "type", "veth", "peer", "name", peer)
            _ip("link", "set", dev, "netns", ns)
            _ip("link", "set", peer, "netns", bridge)
            _ip("-n", bridge, "link", "set", peer, "master", "br0")
            _ip("-n", bridge, "link", "set", peer, "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def limit(self, i: int, rate: str = "8mbit") -> None:
        """Token-bucket limit on host ``i``'s egress (``tc qdisc ... tbf``)."""
        subprocess.run(
            ["ip", "netns", "exec", self.ns(i), "tc", "qdisc", "add", "dev", self.dev(i),
             "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"],
            check=True, capture_output=True, timeout=30,
        )

    def qdisc(self, i: int) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(i), "tc", "qdisc", "show", "dev", self.dev(i)],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout

    def counters(self, i: int) -> tuple[int, int]:
        """(rx, tx) bytes of host ``i``'s veth."""
        stats = f"/sys/class/net/{self.dev(i)}/statistics"
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns(i), "cat", f"{stats}/rx_bytes", f"{stats}/tx_bytes"],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout.split()
        return int(out[0]), int(out[1])

    def down(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made.clear()
