"""Named random streams: every random draw of a run is a pure function of (stream, --seed, index).

A generator seed is packed as  stream · 2²⁹ + seed · 2¹⁹ + index  (8 streams, seed < 2¹⁰, index < 2¹⁹), so
two draws never share a seed. It must fit in 32 bits: torch's CPU generator (mt19937) keeps only the low
32 bits of `manual_seed`, so a wider packing (an earlier version used stream · 2⁵⁶ + seed · 2³²) hands
every stream and every --seed the same numbers for the same index (tests/test_seeds.py checks the draws).

That matters for the paper's protocol (Sec. 3.1): the models that *evaluate* a distilled dataset must be
fresh, i.e. their random heads must never be heads that the distillation trained against (Algorithm 1
draws a new θ_0 at every outer step). With one stream per purpose, "evaluation head 0" and "training head
of outer step 0" are different draws by construction.
"""

import torch

STREAMS = {
    "distilled-init": 0,  # x̃ and attention-label initialisation (Algorithm 1, lines 1–2)
    "real-init": 1,  # which real examples --init real copies
    "train-val-split": 2,  # the held-out validation slice of the training split
    "real-batch-order": 3,  # the order of real mini-batches, one index per epoch
    "training-head": 4,  # θ_0 of outer step s (Algorithm 1, line 4), index = s
    "validation-head": 5,  # the K models of a validation during distillation
    "evaluation-head": 6,  # the N models of `python -m ddattn.evaluate` (and of the baselines)
    "baseline": 7,  # draws of the baselines (full fine-tuning's head and batch order)
}
STREAM_BITS, SEED_BITS, INDEX_BITS = 3, 10, 19  # 32 bits in all
SEED_LIMIT, INDEX_LIMIT = 1 << SEED_BITS, 1 << INDEX_BITS
assert len(STREAMS) <= 1 << STREAM_BITS


def stream_seed(stream: str, seed: int, index: int = 0) -> int:
    """The generator seed of draw `index` of `stream` in a run with `--seed seed`."""
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be in [0, {SEED_LIMIT}), not {seed}")
    if not 0 <= index < INDEX_LIMIT:
        raise ValueError(f"stream index must be in [0, {INDEX_LIMIT}), not {index}")
    return (STREAMS[stream] << (SEED_BITS + INDEX_BITS)) | (seed << INDEX_BITS) | index


def generator(stream: str, seed: int, index: int = 0) -> torch.Generator:
    """A CPU generator seeded for draw `index` of `stream`."""
    return torch.Generator().manual_seed(stream_seed(stream, seed, index))
