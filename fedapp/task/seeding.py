"""Derived seeds: one independent, reproducible stream per purpose.

docs/evaluation.md (Test sets and seeds).

Library code never seeds the global RNGs; it derives a seed here and feeds a
private ``torch.Generator`` or ``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np
import torch

#: One purpose per random stream; every value distinct (tests/test_data.py checks it).
PURPOSE_PARTITION = 0
PURPOSE_INIT = 1
PURPOSE_DATA_ORDER = 2
PURPOSE_SAMPLING = 3
PURPOSE_FAULT = 4
PURPOSE_SPLIT_DIRECTIONS = 16  # HERON-SFL client ZO directions
PURPOSE_AUX_INIT = 17  # HERON-SFL auxiliary head initialisation
PURPOSE_FEDGEN_INIT = 30  # FedGen: generator initialisation
PURPOSE_FEDGEN_SERVER = 31  # FedGen: the server's (label, noise) draws
PURPOSE_FEDGEN_CLIENT = 32  # FedGen: the clients' regulariser draws
PURPOSE_ZO_STEP = 40  # ZO perturbation seeds (zo trainer, zo-seed); apart from other purposes
# FedZGE (50..59, clear of other strategies' purposes): generator init, synthetic latents,
# query directions.
PURPOSE_FEDZGE_GENERATOR = 50
PURPOSE_FEDZGE_SYNTH = 51
PURPOSE_FEDZGE_QUERY = 52
PURPOSE_VTC_NOISE = 60  # FedVTC: reparameterisation noise and synthetic latents


def derive_seed(base: int, *parts: int) -> int:
    """Stable 32-bit seed for ``(base, *parts)``, e.g. (run seed, purpose, round, partition)."""
    return int(np.random.SeedSequence([base, *parts]).generate_state(1)[0])


def torch_generator(seed: int) -> torch.Generator:
    """A private CPU generator seeded with ``seed`` (never the global RNG)."""
    return torch.Generator(device="cpu").manual_seed(seed)
