"""A synthetic translation task: copy or reverse a sequence of random symbols.

    source  s_1 s_2 .. s_n [EOS]
    target  [BOS] s_n .. s_2 s_1 [EOS]      (reverse)   or   [BOS] s_1 .. s_n [EOS]   (copy)

A small model learns it in well under a minute on a CPU, but only if the masks, the teacher forcing, the loss
and the decoding are right: the first end-to-end test that training works.
"""

from __future__ import annotations

import random

from glassformer.data.parallel import ParallelDataset

TASKS = ("copy", "reverse")


def symbol_sequences(
    task: str,
    count: int,
    num_symbols: int,
    min_length: int,
    max_length: int,
    first_id: int,
    bos_token_id: int,
    eos_token_id: int,
    seed: int = 0,
) -> ParallelDataset:
    """``count`` pairs of random sequences of ids ``first_id .. first_id + num_symbols - 1``."""
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; choose one of {TASKS}")
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        symbols = [first_id + rng.randrange(num_symbols) for _ in range(rng.randint(min_length, max_length))]
        output = symbols[::-1] if task == "reverse" else symbols
        examples.append((symbols + [eos_token_id], [bos_token_id] + output + [eos_token_id]))
    return ParallelDataset.from_examples(examples)
