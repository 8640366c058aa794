"""A glassformer Transformer configured as torch.nn.Transformer is (post-norm, ReLU, a final norm after each
stack), with weights copied from one, computes the same function: the architecture checked against code no
one here wrote."""

import math

import pytest
import torch
from torch import nn

from glassformer import Transformer, TransformerConfig

PAD = 0


def copy_torch_weights(model: Transformer, reference: nn.Transformer) -> None:
    names = {}
    for i in range(model.config.num_layers):
        for side, attn_names in (("encoder", ("self_attn",)), ("decoder", ("self_attn", "multihead_attn"))):
            ours = f"{side}.layers.{i}"
            theirs = f"{side}.layers.{i}"
            for attn in attn_names:
                mine = "cross_attn" if attn == "multihead_attn" else attn
                names[f"{ours}.{mine}.qkv_proj.weight"] = f"{theirs}.{attn}.in_proj_weight"
                names[f"{ours}.{mine}.qkv_proj.bias"] = f"{theirs}.{attn}.in_proj_bias"
                names[f"{ours}.{mine}.out_proj.weight"] = f"{theirs}.{attn}.out_proj.weight"
                names[f"{ours}.{mine}.out_proj.bias"] = f"{theirs}.{attn}.out_proj.bias"
            for p in ("weight", "bias"):
                names[f"{ours}.ffn.fc1.{p}"] = f"{theirs}.linear1.{p}"
                names[f"{ours}.ffn.fc2.{p}"] = f"{theirs}.linear2.{p}"
                for n in (1, 2, 3) if side == "decoder" else (1, 2):
                    names[f"{ours}.norm{n}.{p}"] = f"{theirs}.norm{n}.{p}"
        for p in ("weight", "bias"):
            names[f"encoder.final_norm.{p}"] = f"encoder.norm.{p}"
            names[f"decoder.final_norm.{p}"] = f"decoder.norm.{p}"
    theirs = reference.state_dict()
    ours = model.state_dict()
    for mine, other in names.items():
        assert ours[mine].shape == theirs[other].shape, mine
    model.load_state_dict({**ours, **{mine: theirs[other] for mine, other in names.items()}})
    covered = {k for k in ours if not k.endswith("embedding.weight") and not k.startswith("output_projection")}
    assert covered == set(names), "every layer weight is mapped"


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
@pytest.mark.parametrize("norm_first", [False, True])
def test_matches_torch_nn_transformer(norm_first):
    d, heads, layers, d_ff, vocab = 32, 4, 2, 64, 30
    reference = nn.Transformer(d, heads, layers, layers, d_ff, dropout=0.0, batch_first=True, norm_first=norm_first)
    reference.eval()
    model = Transformer(
        TransformerConfig(
            src_vocab_size=vocab,
            tgt_vocab_size=vocab,
            d_model=d,
            num_layers=layers,
            num_heads=heads,
            d_ff=d_ff,
            max_seq_length=16,
            dropout=0.0,
            pad_token_id=PAD,
            norm_first=norm_first,
            final_norm=True,
        )
    ).eval()
    copy_torch_weights(model, reference)

    src = torch.tensor([[3, 4, 5, 6, 7, 8], [9, 10, 11, 0, 0, 0]])
    tgt = torch.tensor([[1, 12, 13, 14, 15], [1, 16, 17, 0, 0]])
    ours = model(src, tgt)

    # the same embeddings, positions and output layer around torch's stacks; torch's masks say True = blocked
    def embed(stack, ids):
        return stack.positions(stack.embedding.embedding(ids) * math.sqrt(d))

    hidden = reference(
        embed(model.encoder, src),
        embed(model.decoder, tgt),
        tgt_mask=nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.bool),
        src_key_padding_mask=src == PAD,
        tgt_key_padding_mask=tgt == PAD,
        memory_key_padding_mask=src == PAD,
    )
    theirs = model.output_projection(hidden)
    real = tgt != PAD
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=0)
