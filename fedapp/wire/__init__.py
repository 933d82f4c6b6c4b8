"""The wire contract: one module per protocol, each a frozen dataclass per message.

- :mod:`fedapp.wire.common`: record names, every metric key, codecs, reply
  builders, screening helpers and node-state storage shared by all protocols;
- :mod:`fedapp.wire.weights`: ``train``/``evaluate`` on a global model (FedAvg, FedProx);
- :mod:`fedapp.wire.fedgen`: FedGen's generator riding on ``train``;
- :mod:`fedapp.wire.zo_seed`: seeds and scalars (``train.seeds``, ``evaluate.seeds``);
- :mod:`fedapp.wire.split`: HERON-SFL / CSE-FSL (``train.split``);
- :mod:`fedapp.wire.fedzge`: FedZGE (``train.local``, ``query.logits``, ``train.distill``);
- :mod:`fedapp.wire.fedvtc`: FedVTC (``train.stats``, ``train.decoder``, ``train.finetune``,
  ``evaluate.vtc``).

Strategies encode what they send and decode what they receive here, and so do the
client handlers; neither side indexes a record by a literal key. Imports: the
config, the Flower-free task package and ``flwr.app`` only.
"""
