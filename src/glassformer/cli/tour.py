"""``glassformer tour``: the guide's sections, run on the guide's own examples with glassformer's parts.

Each step prints what glassformer computes. Where the guide printed a wrong number, a line marked
``guide printed`` shows it next to the correct one and says why it was wrong.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from glassformer import Transformer, TransformerConfig
from glassformer.masks import causal_mask, decoder_self_attention_mask, padding_mask
from glassformer.nn import (
    Decoder,
    DecoderLayer,
    Encoder,
    EncoderLayer,
    LayerNorm,
    MultiHeadAttention,
    PositionalEncoding,
    PositionWiseFeedForward,
    TokenEmbedding,
    guide_layer_norm,
    scaled_dot_product_attention,
    sinusoidal_encoding,
)


def fmt(t: torch.Tensor, digits: int = 4) -> str:
    """A tensor as a compact nested list with ``digits`` decimals."""
    if t.dim() == 0:
        return f"{t.item():.{digits}f}"
    if t.dtype == torch.bool:
        return str(t.int().tolist())
    return "[" + ", ".join(fmt(row, digits) for row in t) + "]"


def section(title: str) -> None:
    print(f"\n== {title} ==")


def embeddings(out: Callable[[str], None]) -> None:
    section("3. Embeddings: e_i = E[i, :]")
    table = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9], [1.0, 1.1, 1.2], [1.3, 1.4, 1.5]])
    emb = TokenEmbedding(5, 3, scale=False)
    with torch.no_grad():
        emb.weight.copy_(table)
    words = ["hello", "world", "transformer", "example", "embedding"]
    out(f"vocabulary {words}, E is 5x3")
    out(f"E[2] ('transformer') = {fmt(emb(torch.tensor([[2]]))[0, 0], 1)}")
    scaled = TokenEmbedding(5, 3)
    with torch.no_grad():
        scaled.weight.copy_(table)
    out(f"inside the Transformer it is scaled by sqrt(d_model): {fmt(scaled(torch.tensor([[2]]))[0, 0])}")
    big = TokenEmbedding(1000, 300)
    out(f"a (1, 3) batch of ids through a 1000x300 table -> {tuple(big(torch.tensor([[3, 5, 9]])).shape)}")


def positional_encoding(out: Callable[[str], None]) -> None:
    section("4. Positional encoding: PE(pos,2i) = sin(pos/10000^(2i/d)), PE(pos,2i+1) = cos(same)")
    pe = sinusoidal_encoding(3, 300)[2]
    out(f"position 2, d_model 300, dims 0..5: {fmt(pe[:6], 5)}")
    out(
        "guide printed:  [0.90930, -0.41615, 0.98045, -0.19678, 0.99998, 0.00634] — wrong from dim 2 on: its loop "
        "used 10000^(2*i/d) with i already the even index, doubling the exponent"
    )
    x = torch.zeros(1, 3, 300)
    out(f"PositionalEncoding(300)(x) for x of shape {tuple(x.shape)} -> {tuple(PositionalEncoding(300)(x).shape)}")


def attention(out: Callable[[str], None]) -> None:
    section("5. Scaled dot-product attention: softmax(Q K^T / sqrt(d_k)) V")
    q = torch.tensor([[1, 0, 1], [0, 1, 1]])
    k = torch.tensor([[1, 2, 1], [2, 1, 0]])
    v = torch.tensor([[0.5, 0.8], [0.2, 0.3]])
    output, weights = scaled_dot_product_attention(q, k, v)
    out(f"softmax([2, 4, 5]) = {fmt(torch.softmax(torch.tensor([2.0, 4.0, 5.0]), -1))}")
    out(f"2-word example: weights = {fmt(weights)}")
    out(f"                output  = {fmt(output)}")
    section("5.2 Multi-head attention: Concat(head_1..head_h) W_O")
    mha = MultiHeadAttention(300, 4)
    x = torch.randn(1, 3, 300)
    output, weights = mha(x, x, x, need_weights=True)
    out(f"d_model 300, 4 heads of 75: output {tuple(output.shape)}, weights {tuple(weights.shape)}")


def feed_forward(out: Callable[[str], None]) -> None:
    section("6. Position-wise feed-forward: max(0, x W1 + b1) W2 + b2")
    ffn = PositionWiseFeedForward(4, 2)
    with torch.no_grad():  # nn.Linear keeps W transposed
        ffn.fc1.weight.copy_(torch.tensor([[0.1, 0.2], [-0.1, 0.1], [0.3, -0.2], [0.2, 0.1]]).T)
        ffn.fc1.bias.copy_(torch.tensor([0.01, 0.02]))
        ffn.fc2.weight.copy_(torch.tensor([[1.0, -0.5, 0.8, 0.2], [0.5, 0.3, -0.2, 0.4]]).T)
        ffn.fc2.bias.copy_(torch.tensor([0.03, -0.01, 0.02, 0.01]))
    x = torch.tensor([0.5, -0.2, 0.1, 0.8])
    out(f"FFN({fmt(x, 1)}) = {fmt(ffn(x))}")


def layer_norm(out: Callable[[str], None]) -> None:
    section("7. Layer normalization: gamma (x - mu) / sqrt(sigma^2 + eps) + beta")
    x = torch.tensor([2.0, -1.0, 3.0, 0.0])
    out(f"LayerNorm({fmt(x, 1)}) = {fmt(LayerNorm(4)(x))}   (biased variance, as the formula and torch.nn.LayerNorm)")
    guide = guide_layer_norm(x, torch.ones(4), torch.zeros(4))
    out(
        f"guide printed:  {fmt(guide)} — its example divides by the unbiased std plus eps, a different "
        "normalization (kept as glassformer.nn.guide_layer_norm for teaching only)"
    )


def layers(out: Callable[[str], None]) -> None:
    section("8-9. Encoder and decoder layers (post-norm: LayerNorm(x + Dropout(Sublayer(x))))")
    x = torch.randn(1, 3, 300)
    enc_out, _ = EncoderLayer(300, 4, 2048).eval()(x)
    out(f"EncoderLayer(300, 4 heads, d_ff 2048): {tuple(x.shape)} -> {tuple(enc_out.shape)}")
    dec_out, _, _ = DecoderLayer(300, 4, 2048).eval()(x, enc_out)
    out(f"DecoderLayer with the encoder output as memory: {tuple(x.shape)} -> {tuple(dec_out.shape)}")


def stacks(out: Callable[[str], None]) -> None:
    section("10-12. Encoder, decoder and the Transformer (12 layers, d_model 300, vocab 10000)")
    args = dict(d_model=300, num_layers=12, num_heads=4, d_ff=2048, max_seq_length=512)
    src = torch.randint(1, 10000, (64, 30))
    tgt = torch.randint(1, 10000, (64, 20))
    with torch.no_grad():
        memory = Encoder(10000, **args).eval()(src)
        out(f"Encoder: src {tuple(src.shape)} -> {tuple(memory.shape)}")
        hidden = Decoder(10000, **args).eval()(tgt, memory)
        out(f"Decoder: tgt {tuple(tgt.shape)} with memory -> {tuple(hidden.shape)}")
        config = TransformerConfig(src_vocab_size=10000, tgt_vocab_size=10000, **args)
        logits = Transformer(config).eval()(src, tgt)
    out(f"Transformer: src {tuple(src.shape)}, tgt {tuple(tgt.shape)} -> logits {tuple(logits.shape)}")
    small = Transformer(
        TransformerConfig(
            src_vocab_size=20, tgt_vocab_size=20, d_model=16, num_layers=1, num_heads=2, d_ff=32, dropout=0.0
        )
    ).eval()
    short, padded = torch.tensor([[5, 6, 7]]), torch.tensor([[5, 6, 7, 0, 0, 0]])
    target = torch.tensor([[1, 8, 9]])
    gap = (small(short, target) - small(padded, target)).abs().max().item()
    out(
        f"source padding is masked in the cross-attention too: logits for {short.tolist()} and {padded.tolist()} "
        f"differ by {gap:.1e} (the guide passed no mask there, so padding changed its translations)"
    )


def masks(out: Callable[[str], None]) -> None:
    section("13. Masks (bool, True = may attend)")
    src = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0]])
    tgt = torch.tensor([[1, 2, 3, 4, 0], [5, 6, 0, 0, 0]])
    out(f"padding_mask(src)[0] = {fmt(padding_mask(src, 0)[0, 0, 0])}   shape {tuple(padding_mask(src, 0).shape)}")
    out(f"causal_mask(3) = {fmt(causal_mask(3))}")
    combined = decoder_self_attention_mask(tgt, 0)
    out(f"decoder mask for {tgt[0].tolist()} (causal & padding), shape {tuple(combined.shape)}:")
    for row in combined[0, 0]:
        out(f"    {row.int().tolist()}")
    out(
        "guide printed:  [[1,0,0,0,1], [1,1,0,0,1], [1,1,1,0,1], [1,1,1,1,1], [1,1,1,1,1]] with 1 = blocked — "
        "it mixed two conventions and combined them with max, so each position saw the future and not the past"
    )


STEPS = [embeddings, positional_encoding, attention, feed_forward, layer_norm, layers, stacks, masks]


def run_tour(seed: int = 42, out: Callable[[str], None] = print) -> None:
    """Run every step, printing through ``out``."""
    torch.manual_seed(seed)
    print(f"glassformer tour: the guide's examples, computed by glassformer (seed {seed}, torch {torch.__version__})")
    for step in STEPS:
        step(out)
    print("\nEvery part above lives in src/glassformer/nn/, one file per idea; the model in src/glassformer/models/.")


def register(commands) -> None:
    parser = commands.add_parser(
        "tour",
        help="walk through the guide's sections with glassformer's parts",
        description="Run the guide's worked examples with glassformer's parts and print each result, flagging the "
        "numbers the guide got wrong.",
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed for the random examples (default 42)")
    parser.set_defaults(func=lambda args: run_tour(seed=args.seed))
