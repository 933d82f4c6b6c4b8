"""Derived seeds: one independent, reproducible stream per purpose (SPEC §7.2).

Library code never seeds the global RNGs; it derives a seed here and feeds a
private ``torch.Generator`` or ``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np
import torch

PURPOSE_PARTITION = 0
PURPOSE_INIT = 1
PURPOSE_DATA_ORDER = 2
PURPOSE_SAMPLING = 3
PURPOSE_FAULT = 4
PURPOSE_VTC_NOISE = 40  # FedVTC: reparameterisation noise and synthetic latents


def derive_seed(base: int, *parts: int) -> int:
    """Stable 32-bit seed for ``(base, *parts)``, e.g. (run seed, purpose, round, partition)."""
    return int(np.random.SeedSequence([base, *parts]).generate_state(1)[0])


def torch_generator(seed: int) -> torch.Generator:
    """A private CPU generator seeded with ``seed`` (never the global RNG)."""
    return torch.Generator(device="cpu").manual_seed(seed)
