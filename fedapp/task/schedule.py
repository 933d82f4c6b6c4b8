"""The learning-rate schedule across rounds: one function for the server and every client."""

from __future__ import annotations


def round_lr(base: float, decay: float, server_round: int) -> float:
    """η_t = η · decay^(t−1): the rate of round ``server_round`` (1-based).

    ``client.lr`` (first-order trainers) and ``zo.lr`` (zeroth-order trainers, and
    the zo-seed server, which sends η_t to its nodes) both decay by ``client.lr-decay``.
    """
    return base * decay ** (server_round - 1)
