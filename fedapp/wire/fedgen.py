"""The FedGen protocol: the weights protocol plus the server's generator from round 2.

FedGen (Zhu, Hong, Zhou, ICML 2021, arXiv 2105.10056). From round 2 on, ``train``
messages carry the server's latent generator next to the model (``generator``),
and the ``config`` record carries the round's regularisation weights and the
available labels. Replies keep FedAvg's shape
(:func:`fedapp.wire.weights.encode_train_reply`); label counts travel in
``client-info``.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedapp.task.fedgen import RegularizerRound
from fedapp.wire.common import get_float, get_ints, round_config, unpack_arrays

GENERATOR = "generator"
FEDGEN_ALPHA = "fedgen-alpha"
FEDGEN_BETA = "fedgen-beta"
FEDGEN_LABELS = "fedgen-labels"


def fedgen_config(
    config: ConfigRecord, alpha: float, beta: float, labels: list[int]
) -> ConfigRecord:
    """A copy of ``config`` with FedGen's alpha_t, beta_t and available labels."""
    return ConfigRecord(
        {**config, FEDGEN_ALPHA: alpha, FEDGEN_BETA: beta, FEDGEN_LABELS: list(labels)}
    )


def attach_generator(messages: Iterable[Message], generator: ArrayRecord) -> None:
    """Put the generator's state next to the model of every ``train`` message."""
    for message in messages:
        message.content[GENERATOR] = generator


def decode_down(content: RecordDict) -> RegularizerRound | None:
    """FedGen's regulariser inputs (the typed down part), or ``None`` without a generator."""
    if GENERATOR not in content.array_records:
        return None
    config = round_config(content)
    return RegularizerRound(
        generator=unpack_arrays(content, GENERATOR),
        alpha=get_float(config, FEDGEN_ALPHA),
        beta=get_float(config, FEDGEN_BETA),
        labels=tuple(get_ints(config, FEDGEN_LABELS)),
    )
