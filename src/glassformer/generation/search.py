"""Greedy decoding, sampling and beam search for a causal language model.

The model is used through a small interface, so any decoder-only model can be decoded:

    model(input_ids, attention_mask=..., cache=..., last_token_only=True) -> logits (batch, 1, vocab)
    model.make_cache(batch, max_length) -> KVCache
    model.config.vocab_size, model.config.max_seq_length

The prompt is run once; each later step feeds one token per sequence and reads everything earlier from the
key/value cache, through the decoding step ``glassformer.generation.step`` chooses for the model (its modules, or
a fused CPU step where it takes the model: ``glassformer.generation.fused_step``).
Batched prompts are left-padded, with ``attention_mask`` 0 at the padding.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from glassformer import runtime
from glassformer.backends.cpu.candidates import top_log_probs
from glassformer.backends.cpu.onednn import min_packed_rows
from glassformer.generation import sampler, speculative
from glassformer.generation.config import GenerationConfig
from glassformer.generation.processors import build_processors
from glassformer.generation.sampler import Sampling
from glassformer.generation.step import DecodingStep, choose_step
from glassformer.nn.linear import packed_weights
from glassformer.nn.slot_cache import BeamBlocks

NEG = -1.0e9  # a score no real candidate reaches; used to rank candidates out, never added to attention logits


def generate(
    model,
    input_ids: torch.Tensor,
    generation_config: GenerationConfig | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    on_tokens: Callable[[torch.Tensor], None] | None = None,
    pack_weights: bool | None = None,
    assistant_model=None,
    **options,
) -> torch.Tensor:
    """Continue ``input_ids`` ``(batch, prompt)``; returns prompt + new tokens ``(batch, prompt + new)``.

    ``generation_config`` (a ``GenerationConfig``; its defaults if None) says how, and ``options`` — its field
    names as keywords, e.g. ``max_new_tokens=20, num_beams=4`` — override it. ``attention_mask`` ``(batch,
    prompt)``, 0 at padding, for left-padded batches (beam search returns ``num_return_sequences`` rows per
    input). ``on_tokens`` is called with each step's new tokens ``(batch,)`` (streaming; greedy and sampling
    only). ``pack_weights`` packs float32 weights for oneDNN while decoding (see ``glassformer.nn.linear``); by
    default when each step feeds 2 to 64 rows on the CPU, where it is faster. ``assistant_model`` (a model with
    the same vocabulary) drafts ``num_assistant_tokens`` tokens at a time for speculative decoding
    (``glassformer.generation.speculative``; one sequence, the same tokens).
    """
    config = (generation_config or GenerationConfig()).updated(**options)
    config.validate(model.config.vocab_size)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(
            "input_ids must be a (batch, prompt) tensor of token ids; add a batch dimension with ids[None]"
        )
    if input_ids.size(1) == 0:
        raise ValueError("the prompt is empty; give at least one token (for example the BOS token)")
    device = runtime.module_device(model)  # the prompt goes where the model is; the output stays there
    input_ids = input_ids.to(device)
    prompt_length = input_ids.size(1)
    max_length = config.total_length(prompt_length, model.config.max_seq_length)
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has {tuple(input_ids.shape)}"
            )
        # no padding: decode without a mask (the model's cheaper unmasked path)
        attention_mask = None if bool(attention_mask.all()) else attention_mask.to(device).long()
    step = choose_step(model)  # the modules, or the fused CPU step where the model takes it (generation.step)
    if pack_weights is None:
        pack_weights = device.type == "cpu" and input_ids.size(0) * config.num_beams >= min_packed_rows()
    with packed_weights(model) if pack_weights else nullcontext():
        generator = None
        if config.seed is not None:
            generator = torch.Generator(device=device).manual_seed(config.seed)
        rows = input_ids.size(0) * config.num_beams
        sampling = Sampling.of([config] * rows, [generator] * rows, build_processors(config, prompt_length), device)
        if config.num_beams > 1:
            return beam_search(model, step, input_ids, attention_mask, config, max_length, sampling)
        drafter = speculative.drafter(model, assistant_model, config, max_length)
        if drafter is not None:  # speculative decoding, one sequence at a time
            return speculative.speculative_decode(
                model, step, input_ids, config, max_length, sampling, drafter, on_tokens
            )
        return greedy_or_sample(model, step, input_ids, attention_mask, config, max_length, sampling, on_tokens)


def greedy_or_sample(
    model,
    step: DecodingStep,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    config: GenerationConfig,
    max_length: int,
    sampling: Sampling,
    on_tokens: Callable[[torch.Tensor], None] | None,
) -> torch.Tensor:
    """One token per step from the batched sampler: the argmax of the scores, or (``config.do_sample``) a draw from
    their softmax."""
    batch = input_ids.size(0)
    cache = model.make_cache(batch, max_length) if config.use_cache else None
    ids = input_ids
    unfinished = [True] * batch  # on the host: the sampler's tokens come back as a list, once per step
    logits = step(ids, attention_mask, cache)
    while True:
        rows = torch.tensor(unfinished, device=ids.device)
        counts = sampler.token_counts(ids[:, input_ids.size(1) :], logits.size(-1)) if sampling.counted else None
        tokens = sampler.choose(sampler.scores(logits, ids, sampling, counts), sampling, rows)
        tokens = [t if alive else config.fill_token_id for t, alive in zip(tokens, unfinished, strict=True)]
        next_tokens = torch.tensor(tokens, device=ids.device)
        ids = torch.cat([ids, next_tokens[:, None]], dim=1)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        if on_tokens is not None:
            on_tokens(next_tokens)
        unfinished = [alive and t != config.eos_token_id for t, alive in zip(tokens, unfinished, strict=True)]
        if not any(unfinished) or ids.size(1) >= max_length:
            return ids
        step_ids = next_tokens[:, None] if config.use_cache else ids
        logits = step(step_ids, attention_mask, cache)


def beams_cache(model, step: DecodingStep, rows: int, max_length: int, mask: torch.Tensor | None):
    """The key/value cache of beam search's ``rows``: where the fused step decodes rows without padding, the beams
    share their parents' blocks (``BeamBlocks``: reordering copies a few positions a row); else a ``KVCache``, whose
    reorder copies the histories that change (the modules read it contiguous)."""
    if step.kind != "fused" or mask is not None:
        return model.make_cache(rows, max_length)
    one_row = model.make_cache(1, max_length).keys  # the model's cache layout: (layers, 1, heads, max_length, d)
    layers, _, heads, _, head_dim = one_row.shape
    return BeamBlocks(layers, rows, heads, max_length, head_dim, one_row.dtype, one_row.device)


def beam_candidates(
    logits: torch.Tensor, history: torch.Tensor, prompt_length: int, running_scores: torch.Tensor, sampling: Sampling
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Beam search's ``k = 2 · num_beams`` best candidates of a step per input, best first: ``(scores, parent beam,
    token)``, each ``(batch, k)``, a candidate's score its beam's running score plus log softmax(logits) of its token
    (penalized and constrained as ``sampling`` asks). ``logits`` ``(batch · beams, vocab)`` (or with a step axis of 1),
    ``history`` ``(batch · beams, length)``, ``running_scores`` ``(batch, beams)``.

    Where nothing changes the scores, a beam's k best are taken first (``backends.cpu.candidates.top_log_probs``: no
    beam gives more than k of its input's best k), and only those ``beams · k`` ranked; else every token of every
    beam is."""
    batch, num_beams = running_scores.shape
    k = 2 * num_beams
    logits = logits.reshape(batch * num_beams, -1)
    vocab = logits.size(-1)
    plain = not (sampling.penalized or sampling.counted or sampling.guides is not None or sampling.constraints)
    if plain and k <= vocab:
        values, tokens = top_log_probs(logits, k)  # (batch · beams, k) each
        total = (values.view(batch, num_beams, k) + running_scores[..., None]).view(batch, -1)
        top_scores, pick = total.topk(k)
        return top_scores, pick // k, tokens.view(batch, -1).gather(1, pick)
    counts = sampler.token_counts(history[:, prompt_length:], vocab) if sampling.counted else None
    log_probs = sampler.scores(F.log_softmax(logits, -1), history, sampling, counts)
    total = (log_probs.view(batch, num_beams, vocab) + running_scores[..., None]).view(batch, -1)
    top_scores, top_index = total.topk(k)
    return top_scores, top_index // vocab, top_index % vocab


def _for_step(cache, new: int):
    """What a step of ``new`` positions per row decodes with: a ``BeamBlocks``' view of its rows, or the cache."""
    return cache.step_view(new) if isinstance(cache, BeamBlocks) else cache


def beam_search(
    model,
    step: DecodingStep,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    config: GenerationConfig,
    max_length: int,
    sampling: Sampling,
) -> torch.Tensor:
    """Keep the ``num_beams`` best partial sequences by total log-probability; collect finished ones (EOS or
    ``max_length``) scored by total / generated_length^length_penalty; return each input's best finished one.

    Each step ranks ``2 · num_beams`` candidates so that ``num_beams`` survive even when some end. Only a candidate
    within the top ``num_beams`` may enter the finished set; each input's ``num_return_sequences`` best finished ones
    are returned, best first, as ``(batch · returned, length)``. The search ends for an input once its ``num_beams``
    finished hypotheses all score above what its best running beam could still reach at the current length
    (the stopping rule of ``transformers``' default ``early_stopping=False``), or at ``max_length``.
    """
    num_beams, eos_token_id, fill = config.num_beams, config.eos_token_id, config.fill_token_id
    length_penalty, use_cache = config.length_penalty, config.use_cache
    batch, prompt_length = input_ids.shape
    device = input_ids.device
    candidates_per_step = 2 * num_beams
    in_top_beams = torch.arange(candidates_per_step, device=device) < num_beams

    running = torch.full((batch, num_beams, max_length), fill, dtype=torch.long, device=device)
    running[:, :, :prompt_length] = input_ids[:, None]
    running_scores = torch.zeros(batch, num_beams, device=device)
    running_scores[:, 1:] = NEG  # all beams start identical: only the first may expand at step one
    finished = running.clone()
    finished_scores = torch.full((batch, num_beams), NEG, device=device)
    finished_lengths = torch.zeros(batch, num_beams, dtype=torch.long, device=device)
    is_finished = torch.zeros(batch, num_beams, dtype=torch.bool, device=device)
    improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)
    batch_offset = torch.arange(batch, device=device)[:, None] * num_beams

    flat_mask = None if attention_mask is None else attention_mask.repeat_interleave(num_beams, dim=0)
    cache = beams_cache(model, step, batch * num_beams, max_length, flat_mask) if use_cache else None
    logits = step(input_ids.repeat_interleave(num_beams, dim=0), flat_mask, _for_step(cache, prompt_length))
    length = prompt_length
    while True:
        history = running[:, :, :length].flatten(0, 1)
        top_scores, parent, token = beam_candidates(logits, history, prompt_length, running_scores, sampling)
        sampler.check(top_scores)  # a NaN, or every token banned: refused before anything changes
        candidates = running.gather(1, parent[..., None].expand(-1, -1, max_length)).clone()
        candidates[:, :, length] = token
        ends = torch.full_like(token, length + 1 >= max_length, dtype=torch.bool)
        if eos_token_id is not None:
            ends |= token == eos_token_id

        # the running beams for the next step: the best candidates that did not end
        alive_scores = top_scores + ends.float() * NEG
        keep = alive_scores.topk(num_beams).indices
        running = candidates.gather(1, keep[..., None].expand(-1, -1, max_length))
        running_scores = alive_scores.gather(1, keep)
        parents = parent.gather(1, keep)

        # the finished set: merge in the candidates that ended within the top beams, keep the best num_beams
        just_finished = ends & in_top_beams
        scores = top_scores / ((length + 1 - prompt_length) ** length_penalty)
        scores = scores + (~just_finished).float() * NEG + (~improvable).float() * NEG
        merged_scores = torch.cat([finished_scores, scores], dim=1)
        best = merged_scores.topk(num_beams).indices
        finished = torch.cat([finished, candidates], 1).gather(1, best[..., None].expand(-1, -1, max_length))
        finished_scores = merged_scores.gather(1, best)
        new_lengths = torch.full_like(token, length + 1 - prompt_length)
        finished_lengths = torch.cat([finished_lengths, new_lengths], 1).gather(1, best)
        is_finished = torch.cat([is_finished, just_finished], 1).gather(1, best)

        length += 1
        best_reachable = running_scores[:, :1] / ((length - prompt_length) ** length_penalty)
        worst_finished = torch.where(is_finished, finished_scores.min(1, keepdim=True).values, NEG)
        improvable &= (best_reachable > worst_finished).any(-1, keepdim=True)
        if not improvable.any() or ends.all():
            break
        if flat_mask is not None:
            flat_mask = torch.cat([flat_mask, flat_mask.new_ones(batch * num_beams, 1)], dim=1)
        if use_cache:
            cache.reorder((parents + batch_offset).flatten())
            step_ids = running[:, :, length - 1].reshape(-1, 1)
        else:
            step_ids = running[:, :, :length].flatten(0, 1)
        logits = step(step_ids, flat_mask, _for_step(cache, 1))

    returned = config.num_return_sequences  # the best finished hypotheses of each input, best first
    output_length = prompt_length + int(finished_lengths[:, :returned].max())
    return finished[:, :returned, :output_length].flatten(0, 1)
