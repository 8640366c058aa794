"""What the server serves: a decoder-only model with its tokenizer (and, optionally, a sentence encoder), and the
memory it will need, worked out before the first request.

    weights        every parameter and buffer once (a tied output layer is the embedding; quantized codes, scales)
    packed copy    on the CPU, oneDNN's packed layout of each float weight (``glassformer.nn.linear``): one more copy
    cache          blocks of 32 positions (``SlotCache``, paged), 2 · layers · kv_heads · 32 · head_dim · element size
                   each: ``--kv-blocks``, by default enough for max_batch sequences of max_context positions and
                   the prefix cache's blocks (``--prefix-cache-tokens`` // 32 of them, held in the same pool)
    activations    one prompt of max_context tokens at a time: ~ max_context · (16 · d_model + 4 · d_ff) · 4 bytes,
                   plus heads · max_context² · 4 bytes where attention scores are materialized
    budget         resident memory after loading + packed copy + cache + activations + 128 MiB for the rest
"""

from __future__ import annotations

import dataclasses
import time

from glassformer.models.gpt import GPT
from glassformer.models.quantization import Quantization
from glassformer.nn.linear import can_pack
from glassformer.nn.slot_cache import DEFAULT_BLOCK, default_blocks
from glassformer.pipelines.language_model import load_language_model
from glassformer.pipelines.sentence_encoder import SentenceEncoder
from glassformer.tokenizer import Tokenizer

MIB = 1 << 20
OTHER_BYTES = 128 * MIB  # the HTTP stack, Python objects, allocator slack
END_OF_TURN = ("<|im_end|>", "<|eot_id|>")  # chat templates' end-of-turn tokens (ChatML, Llama 3)


@dataclasses.dataclass
class Served:
    """A loaded model ready to serve: ``name`` is its id in ``/v1/models``."""

    model: GPT
    tokenizer: Tokenizer
    name: str
    eos_token_ids: tuple[int, ...]
    encoder: SentenceEncoder | None = None
    embedding_name: str | None = None
    created: float = dataclasses.field(default_factory=time.time)
    memory: dict = dataclasses.field(default_factory=dict)


def resident_bytes() -> int:
    """This process's resident memory (Linux ``/proc/self/status``; 0 where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def end_tokens(model: GPT, tokenizer: Tokenizer) -> tuple[int, ...]:
    """The tokens that end an answer: the model's end-of-sequence token and, for chat models, the template's
    end-of-turn token (``<|im_end|>``, ``<|eot_id|>``) where the vocabulary has one."""
    ids = {model.config.eos_token_id} if model.config.eos_token_id is not None else set()
    for token in END_OF_TURN:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            ids.add(token_id)
    return tuple(sorted(ids))


def memory_plan(
    model: GPT, max_batch: int, max_context: int, resident: int, encoder=None, prefix_cache_tokens: int = 0,
    kv_blocks: int | None = None,
) -> dict:  # fmt: skip
    """The memory figures of the module docstring, in bytes (``blocks``, ``prefix_blocks``: counts)."""
    c = model.config
    context = min(max_context, c.max_seq_length)
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}  # quantized codes are buffers
    weights = sum(t.numel() * t.element_size() for t in tensors.values())
    packed = sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if can_pack(m))
    element = model.kv_dtype.itemsize  # the slot cache's (bfloat16 with bfloat16 activations: 2)
    prefix_blocks = prefix_cache_tokens // DEFAULT_BLOCK
    blocks = kv_blocks if kv_blocks is not None else default_blocks(max_batch, context, prefix_blocks)
    cache = (1 + blocks) * 2 * c.num_layers * c.kv_heads * DEFAULT_BLOCK * c.head_dim * element  # and the null block
    activations = context * (16 * c.d_model + 4 * c.d_ff) * 4 + c.num_heads * context * context * 4
    if encoder is not None:
        e = encoder.model.config
        activations += 32 * encoder.max_length * (16 * e.d_model + 4 * e.d_ff) * 4
    budget = resident + packed + cache + activations + OTHER_BYTES
    return {"weights": weights, "packed_copy": packed, "cache": cache, "blocks": blocks,
            "prefix_blocks": prefix_blocks, "activations": activations, "resident_after_load": resident,
            "budget": budget}  # fmt: skip


def describe_memory(memory: dict) -> str:
    m = {k: v / MIB for k, v in memory.items()}
    return (
        f"memory: weights {m['weights']:.0f} MiB (+ {m['packed_copy']:.0f} MiB packed copy), key/value cache "
        f"{memory['blocks']} blocks of {DEFAULT_BLOCK} positions ({m['cache']:.0f} MiB; the prefix cache keeps up to "
        f"{memory['prefix_blocks']} of them), activations ≤ {m['activations']:.0f} MiB; resident after loading "
        f"{m['resident_after_load']:.0f} MiB, budget {m['budget']:.0f} MiB"
    )


def load_served(
    model: str,
    max_batch: int,
    max_context: int,
    *,
    name: str | None = None,
    embedding_model: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    quantization: Quantization | None = None,
    prefix_cache_tokens: int = 0,
    kv_blocks: int | None = None,
) -> Served:
    """Load ``model`` (any decoder-only checkpoint ``glassformer generate`` opens) and, if given, the sentence
    encoder ``embedding_model``, placed as ``device`` / ``precision`` ask (``auto``: what this machine does best) and
    quantized as ``quantization`` asks."""
    lm, tokenizer = load_language_model(model, device=device, precision=precision, quantization=quantization)
    encoder = None
    if embedding_model is not None:
        encoder = SentenceEncoder.from_pretrained(embedding_model, device, precision, quantization)
    served = Served(lm, tokenizer, name or str(model), end_tokens(lm, tokenizer), encoder, embedding_model)
    served.memory = memory_plan(lm, max_batch, max_context, resident_bytes(), encoder, prefix_cache_tokens, kv_blocks)
    return served
