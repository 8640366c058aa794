"""Decoding speed: glassformer's GPT.generate against transformers' GPT2LMHeadModel.generate.

GPT-2 124M shape with random weights written by transformers (the real weights are not on PyPI), loaded by both
from the same directory. Greedy decoding of --new-tokens tokens after a --prompt-tokens prompt, no EOS stop, runs
alternating between the two libraries in one process. Rows: float32 at batch 1 and --batch, and glassformer with
bfloat16 weights at batch 1 (against transformers' float32), whose greedy tokens are compared with float32's.

    python bench/generate.py [--batch 8] [--repeats 3] [--new-tokens 128] [--prompt-tokens 32]
"""

from __future__ import annotations

import tempfile

import torch
from decoding import HEADER, agreement, parse_arguments, race, row

from glassformer.models.gpt import GPT


def main() -> None:
    args = parse_arguments(__doc__)
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    directory = tempfile.mkdtemp(prefix="gpt2-124m-")
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(directory)
    hf = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    ours = GPT.from_pretrained(directory)
    ours_bf16 = GPT.from_pretrained(directory, dtype=torch.bfloat16)
    options = dict(max_new_tokens=args.new_tokens, eos_token_id=None, pad_token_id=0)

    print(
        f"GPT-2 124M, random weights; prompt {args.prompt_tokens}, greedy {args.new_tokens} new tokens; "
        f"threads={torch.get_num_threads()}; best of {args.repeats} alternating runs"
    )
    print(HEADER)
    for batch, dtype in ((1, torch.float32), (args.batch, torch.float32), (1, torch.bfloat16)):
        model = ours if dtype == torch.float32 else ours_bf16
        ids = torch.randint(0, 50257, (batch, args.prompt_tokens), generator=torch.Generator().manual_seed(batch))
        best_hf, best_ours, hf_out, our_out = race(hf, model, ids, options, args.repeats)
        if dtype == torch.float32:
            notes = "tokens identical" if torch.equal(hf_out, our_out) else "TOKENS DIFFER"
        else:
            notes = f"first {agreement(hf_out, our_out, args.prompt_tokens)} greedy tokens equal float32's"
        cache_mb = model.make_cache(batch, args.prompt_tokens + args.new_tokens).nbytes / 2**20
        notes += f"; KV cache {cache_mb:.0f} MiB"
        print(row(batch, str(dtype).removeprefix("torch."), args.new_tokens, best_hf, best_ours, notes))


if __name__ == "__main__":
    main()
