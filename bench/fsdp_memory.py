"""On paper: memory per GPU to train GPT-2 124M / 350M / 774M with DDP and with FSDP2, from the model configs.

Nothing is run on a GPU: parameters are counted on glassformer's own GPT built on the ``meta`` device (no memory), and
each term below is a formula of those counts. Training as ``train lm`` does it: float32 weights, bf16 autocast,
AdamW (two float32 moments), float32 gradients, PyTorch's flash attention (no seq × seq score matrix is kept).

    P   parameters;  L layers;  d width;  V vocabulary;  s tokens per sequence;  b sequences per GPU;  N GPUs
    DDP      weights 4P + gradients 4P + DDP's gradient buckets 4P (a copy, PyTorch's default) + AdamW 8P
    FSDP2    (4P + 4P + 8P) / N sharded state
             + the gathered float32 weights of the units in flight: the root (embeddings, final norm, tied output
               layer: 4·(V + s)·d, gathered for the whole step) and two layers (the one computing and the one
               prefetched, 2·4·P_layer), plus the same again as gathered gradients before their reduce-scatter
    activations (both)  per layer 34·s·b·d bytes in bf16 (Korthikanti et al. 2022, "Reducing Activation
             Recomputation", without the 5·a·s²·b term that flash attention does not store) + the logits:
             s·b·V·(2 + 4 + 4) bytes (bf16 logits, their float32 copy for the loss, its gradient)

    python bench/fsdp_memory.py [--gpus 8] [--batch 8] [--seq 1024]
"""

from __future__ import annotations

import argparse

import torch

GPT2 = {  # the published shapes: vocabulary 50,257, 1,024 positions, 4·d feed-forward, tied output layer
    "GPT-2 124M": dict(d_model=768, num_layers=12, num_heads=12),
    "GPT-2 350M": dict(d_model=1024, num_layers=24, num_heads=16),
    "GPT-2 774M": dict(d_model=1280, num_layers=36, num_heads=20),
}
GiB = 2**30


def sizes(shape: dict) -> tuple[int, int, int]:
    """(parameters, parameters of one layer, parameters outside the layers) of glassformer's GPT."""
    from glassformer import GPT, GPTConfig

    config = GPTConfig(vocab_size=50257, max_seq_length=1024, d_ff=4 * shape["d_model"], **shape)
    with torch.device("meta"):
        model = GPT(config)
    total = sum(p.numel() for p in model.parameters())
    layer = sum(p.numel() for p in model.layers[0].parameters())
    return total, layer, total - config.num_layers * layer


def plan(shape: dict, gpus: int, batch: int, seq: int) -> dict[str, float]:
    total, layer, outside = sizes(shape)
    d, layers, vocab = shape["d_model"], shape["num_layers"], 50257
    activations = layers * 34 * seq * batch * d + seq * batch * vocab * (2 + 4 + 4)
    ddp_state = (4 + 4 + 4 + 8) * total
    fsdp_state = (4 + 4 + 8) * total / gpus
    gathered = 2 * (4 * outside + 2 * 4 * layer)  # weights in flight, and as many gradients before reduce-scatter
    return {
        "parameters": total,
        "ddp_state": ddp_state,
        "fsdp_state": fsdp_state + gathered,
        "activations": activations,
        "ddp": ddp_state + activations,
        "fsdp": fsdp_state + gathered + activations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="sequences per GPU")
    parser.add_argument("--seq", type=int, default=1024, help="tokens per sequence")
    args = parser.parse_args()
    print(f"memory per GPU, {args.gpus} GPUs, {args.batch} × {args.seq} tokens per GPU, bf16 autocast, AdamW (GiB)\n")
    print("| model | parameters | DDP: weights+grads+buckets+Adam | FSDP2: sharded + in flight | activations "
          "| DDP total | FSDP2 total | fits 16 GiB (DDP / FSDP2) | fits 24 GiB (DDP / FSDP2) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, shape in GPT2.items():
        p = plan(shape, args.gpus, args.batch, args.seq)

        def fits(limit: float, p: dict = p) -> str:
            return " / ".join("yes" if p[kind] <= limit * GiB else "no" for kind in ("ddp", "fsdp"))

        print(f"| {name} | {p['parameters'] / 1e6:.0f}M | {p['ddp_state'] / GiB:.2f} | {p['fsdp_state'] / GiB:.2f} "
              f"| {p['activations'] / GiB:.2f} | {p['ddp'] / GiB:.2f} | {p['fsdp'] / GiB:.2f} | {fits(16)} "
              f"| {fits(24)} |")  # fmt: skip


if __name__ == "__main__":
    main()
