"""Decoding speed with real weights: glassformer's GPT (Llama options) against transformers' LlamaForCausalLM on
SmolLM2-135M-Instruct.

Both load the same GGUF file (the ``smollm2`` shortcut, fetched once with pip) and dequantize it to float32.
Prompts are --prompt-tokens tokens of real English (one different passage per row), greedy decoding of
--new-tokens tokens with no EOS stop, runs alternating between the two libraries in one process. Rows: float32 at
batch 1 and --batch; bfloat16 (both libraries' models converted) at batch 1 and --batch, whose greedy tokens are
compared with glassformer's float32 ones.

    python bench/generate_llama.py [--batch 8] [--repeats 3] [--new-tokens 128] [--prompt-tokens 32]
"""

from __future__ import annotations

import torch
from decoding import HEADER, agreement, parse_arguments, race, row

from glassformer.data.pretrained import resolve_shortcut
from glassformer.models.gpt import GPT
from glassformer.tokenizer import Tokenizer

PASSAGES = [
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined a screw "
    "press with movable metal type. Within fifty years, presses were working in more than two hundred cities.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make sugar and "
    "oxygen. It takes place mostly in the leaves, inside small structures called chloroplasts.",
    "To bake a simple loaf of bread, mix flour, water, salt and yeast, knead the dough for ten minutes, let it "
    "rise until it doubles in size, shape it, and bake it in a hot oven until the crust is golden brown.",
    "The Pacific Ocean is the largest and deepest of the Earth's oceans. It stretches from the Arctic in the "
    "north to the Southern Ocean in the south and covers about one third of the planet's surface.",
]


def prompts(tokenizer: Tokenizer, batch: int, length: int) -> torch.Tensor:
    rows = []
    for i in range(batch):
        ids = tokenizer.encode(" ".join(PASSAGES[i % len(PASSAGES) :] + PASSAGES[: i % len(PASSAGES)]))
        rows.append(ids[i // len(PASSAGES) : i // len(PASSAGES) + length])  # rows differ beyond the 4 passages
    return torch.tensor(rows)


def main() -> None:
    args = parse_arguments(__doc__)
    import transformers

    transformers.logging.set_verbosity_error()
    directory = resolve_shortcut("smollm2")
    gguf_file = next(directory.glob("*.gguf")).name
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32).eval()
    ours = GPT.from_pretrained(directory)
    tokenizer = Tokenizer.from_pretrained(directory)
    options = dict(max_new_tokens=args.new_tokens, eos_token_id=None, pad_token_id=2)

    print(
        f"SmolLM2-135M-Instruct (GGUF Q4_1 dequantized); prompt {args.prompt_tokens}, greedy {args.new_tokens} new "
        f"tokens; threads={torch.get_num_threads()}; best of {args.repeats} alternating runs"
    )
    print(HEADER)
    float32_tokens = {}
    for dtype in (torch.float32, torch.bfloat16):
        if dtype == torch.bfloat16:
            hf, ours = hf.to(dtype), ours.to(dtype)
        for batch in (1, args.batch):
            ids = prompts(tokenizer, batch, args.prompt_tokens)
            best_hf, best_ours, hf_out, our_out = race(hf, ours, ids, options, args.repeats)
            if dtype == torch.float32:
                float32_tokens[batch] = our_out
                notes = "tokens identical" if torch.equal(hf_out, our_out) else "TOKENS DIFFER"
            else:
                notes = (
                    f"first {agreement(float32_tokens[batch], our_out, args.prompt_tokens)} greedy tokens equal fp32's"
                )
            cache_mb = ours.make_cache(batch, args.prompt_tokens + args.new_tokens).nbytes / 2**20
            notes += f"; KV cache {cache_mb:.1f} MiB"
            print(row(batch, str(dtype).removeprefix("torch."), args.new_tokens, best_hf, best_ours, notes))
    text = tokenizer.decode(float32_tokens[1][0, args.prompt_tokens :].tolist(), skip_special_tokens=True)
    print(f"float32 batch-1 continuation: {text[:200]!r}")


if __name__ == "__main__":
    main()
