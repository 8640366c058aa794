"""The continuous-batching scheduler without HTTP: requests joining and leaving a running batch each get the
tokens they would get alone; sampling per request; stop strings, cancellation, timeouts and the queue bound."""

import threading
import time

import pytest
import torch
from equivalence import PRECISIONS, assert_same_greedy_tokens, in_precision, next_scores

from glassformer.backends import kernels
from glassformer.nn.slot_cache import SlotCache
from glassformer.serving.prefix_cache import PrefixCache
from glassformer.serving.requests import Overloaded, Request
from glassformer.serving.scheduler import Scheduler


class Collector:
    """A request's ``deliver``: gathers the events; ``done`` is set at the last one."""

    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if event.kind != "text":
            self.done.set()

    @property
    def text(self):
        return "".join(e.text for e in self.events if e.kind == "text")

    @property
    def last(self):
        return self.events[-1]


def greedy_text(model, tokenizer, prompt, n):
    ids = tokenizer.encode(prompt)
    out = model.generate(torch.tensor([ids]), max_new_tokens=n)
    return tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)


@pytest.fixture
def scheduler(tiny_lm):
    model, tokenizer = tiny_lm
    s = Scheduler(model, tokenizer, max_batch=3, max_context=64, max_queue=8)
    s.start()
    yield s
    s.stop()


def submit(scheduler, tokenizer, prompt, max_tokens, **options):
    collector = Collector()
    request = Request(tokenizer.encode(prompt), max_tokens, collector, **options)
    scheduler.submit(request)
    return request, collector


@pytest.mark.cpu_class
@pytest.mark.parametrize("precision", PRECISIONS)
def test_requests_of_any_length_arriving_at_any_time_get_their_greedy_tokens(tiny_lm, precision):
    """Each request, decoded in a slot beside others, gets the greedy tokens generate gives it alone, in each
    precision. In bfloat16 a slot's batch and a batch of one round differently, so there "the same" allows a
    near-tie to part them (tests/equivalence.py; README, "Every precision")."""
    model, tokenizer = tiny_lm
    model = in_precision(model, precision)
    scheduler = Scheduler(model, tokenizer, max_batch=3, max_context=64, max_queue=8)
    scheduler.start()
    prompts = ["the cat", "a bird sang in the", "the dog ate", "mat", "the tree.", "sat on the mat. the"]
    lengths = [12, 5, 20, 9, 15, 7]
    collectors = []
    try:
        for prompt, n in zip(prompts, lengths, strict=True):  # more requests than slots, arriving while others decode
            collectors.append(submit(scheduler, tokenizer, prompt, n)[1])
            time.sleep(0.01)
        for c in collectors:
            assert c.done.wait(30)
    finally:
        scheduler.stop()
    for prompt, n, c in zip(prompts, lengths, collectors, strict=True):
        assert c.last.kind == "done" and c.last.finish_reason == "length" and c.last.completion_tokens == n
        ids = torch.tensor(tokenizer.encode(prompt))
        alone = model.generate(ids[None], max_new_tokens=n)[0, len(ids) :]
        served = tokenizer.encode(c.text)  # a character vocabulary: one token a character
        depth = model.config.num_layers
        assert_same_greedy_tokens(next_scores(model, ids), served, alone, precision, depth, prompt)
    assert scheduler.active == 0 and sorted(scheduler.free_slots) == [0, 1, 2]


LONG_PROMPT = "the cat sat on the mat. the dog ate the bo"


def long_prompt_beside_a_running_request(scheduler, tokenizer):
    """Start ``scheduler``; once a request (40 tokens) decodes, send LONG_PROMPT (5 tokens); wait for both and stop.
    ``(the long prompt's request, the first's collector, the second's)``."""
    scheduler.start()
    try:
        running, first = submit(scheduler, tokenizer, "a bird", 40)
        while not running.tokens:
            time.sleep(0.001)
        reading, second = submit(scheduler, tokenizer, LONG_PROMPT, 5)
        assert first.done.wait(30) and second.done.wait(30)
    finally:
        scheduler.stop()
    return reading, first, second


@pytest.mark.cpu_class
@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_long_prompt_is_read_in_chunks_between_the_running_requests_steps(tiny_lm, precision):
    """Chunked prefill: a 42-token prompt is read 4 tokens per step while another request decodes, so that one
    gets a token between every two chunks instead of waiting for the whole prompt; both get their greedy tokens."""
    model, tokenizer = tiny_lm
    model = in_precision(model, precision)
    scheduler = Scheduler(model, tokenizer, max_batch=3, max_context=64, prefill_chunk=4)
    log = []
    prefill, step = scheduler._prefill, scheduler._decode_step
    scheduler._prefill = lambda batch: (log.append(("chunk", batch[0].prefilled)), prefill(batch))
    scheduler._decode_step = lambda *a: (log.append(("step", len(scheduler.running))), step(*a))
    reading, first, second = long_prompt_beside_a_running_request(scheduler, tokenizer)
    chunks = [i for i, (kind, done) in enumerate(log) if kind == "chunk" and done < len(reading.prompt)]
    chunks = chunks[-11:]  # the long prompt's: 42 tokens, 4 a step
    assert [log[i][1] for i in chunks] == list(range(0, 41, 4))
    assert all(log[i + 1] == ("step", 1) for i in chunks[:-1])  # the other request's step after each chunk
    for prompt, n, collector in (("a bird", 40, first), (LONG_PROMPT, 5, second)):
        ids = torch.tensor(tokenizer.encode(prompt))
        alone = model.generate(ids[None], max_new_tokens=n)[0, len(ids) :]
        served = tokenizer.encode(collector.text)
        assert_same_greedy_tokens(next_scores(model, ids), served, alone, precision, model.config.num_layers, prompt)


@pytest.mark.cpu_class
@pytest.mark.parametrize("precision", PRECISIONS)
def test_batch_invariant_answers_are_bit_for_bit_the_answers_alone(tiny_lm, precision):
    """``batch_invariant``: four requests (greedy and seeded samples) decoded together give, bit for bit, the tokens
    and log-probabilities each gets alone — in bfloat16 too, where a shared batch rounds differently."""
    model, tokenizer = tiny_lm
    model = in_precision(model, precision)
    asks = [("the cat", 0.0, None), ("a bird sang in the", 0.9, 3), ("mat", 0.0, None), ("the dog ate", 1.2, 8)]

    def run(requests):
        scheduler = Scheduler(model, tokenizer, max_batch=4, max_context=64, batch_invariant=True)
        scheduler.start()
        try:
            collectors = [submit(scheduler, tokenizer, p, 14, temperature=t, seed=s, logprobs=2)[1]
                          for p, t, s in requests]  # fmt: skip
            assert all(c.done.wait(30) for c in collectors)
        finally:
            scheduler.stop()
        return [(c.text, [e for event in c.events for e in event.logprobs]) for c in collectors]

    together = run(asks)
    alone = [run([ask])[0] for ask in asks]
    assert together == alone


def test_sampling_is_per_request_and_reproducible_with_a_seed(tiny_lm, scheduler):
    _, tokenizer = tiny_lm
    runs = []
    for _ in range(2):
        a = submit(scheduler, tokenizer, "the cat", 15, temperature=1.5, seed=7)[1]
        b = submit(scheduler, tokenizer, "the cat", 15, temperature=1.5, seed=8)[1]
        assert a.done.wait(30) and b.done.wait(30)
        runs.append((a.text, b.text))
    assert runs[0] == runs[1] and runs[0][0] != runs[0][1]


def test_a_seeded_request_samples_what_generate_samples_alone(tiny_lm, scheduler):
    """One sampler for both: a seeded request, decoded beside others (greedy and sampled), draws from its own
    generator the tokens ``generate`` draws with the same seed and settings."""
    model, tokenizer = tiny_lm
    others = [submit(scheduler, tokenizer, p, 12, temperature=t) for p, t in (("a bird", 0.0), ("the mat", 0.9))]
    request, collector = submit(scheduler, tokenizer, "the cat", 12, temperature=0.8, top_p=0.9, seed=11)
    assert collector.done.wait(30) and all(c.done.wait(30) for _, c in others)
    ids = torch.tensor([tokenizer.encode("the cat")])
    alone = model.generate(ids, max_new_tokens=12, do_sample=True, temperature=0.8, top_p=0.9, seed=11)
    assert collector.text == tokenizer.decode(alone[0, ids.size(1) :].tolist(), skip_special_tokens=True)


def test_a_stop_string_ends_the_request_without_it(tiny_lm, scheduler):
    model, tokenizer = tiny_lm
    full = greedy_text(model, tokenizer, "the dog", 20)
    stop = full[5:7]
    collector = submit(scheduler, tokenizer, "the dog", 20, stop=(stop,))[1]
    assert collector.done.wait(30)
    assert collector.last.finish_reason == "stop" and collector.text == full[: full.index(stop)]


def test_cancelled_and_timed_out_requests_free_their_slots(tiny_lm, scheduler):
    _, tokenizer = tiny_lm
    request, collector = submit(scheduler, tokenizer, "the cat", 50)
    scheduler.cancel(request)
    late, late_collector = submit(scheduler, tokenizer, "the cat", 50, timeout=1e-9)
    assert late_collector.done.wait(30) and late_collector.last.status == 504
    deadline = time.monotonic() + 10
    while scheduler.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler.active == 0 and scheduler.counters.cancelled == 1 and scheduler.counters.timed_out == 1
    assert not collector.done.is_set()  # a cancelled request gets no answer: its client is gone


def test_the_queue_is_bounded(tiny_lm):
    model, tokenizer = tiny_lm
    scheduler = Scheduler(model, tokenizer, max_batch=1, max_context=64, max_queue=2)  # not started: nothing leaves
    for _ in range(2):
        scheduler.submit(Request(tokenizer.encode("the"), 5, lambda e: None))
    with pytest.raises(Overloaded, match="--max-queue 2"):
        scheduler.submit(Request(tokenizer.encode("the"), 5, lambda e: None))
    with pytest.raises(ValueError, match="exceed the context of 64"):
        scheduler.submit(Request(tokenizer.encode("the"), 62, lambda e: None))


@pytest.mark.cpu_class
@pytest.mark.parametrize("precision", PRECISIONS)
def test_prompts_arriving_together_are_read_in_one_forward_pass(tiny_lm, precision):
    """Four prompts of different lengths admitted together are read right-padded in one pass (not one pass each, so
    the last one's first token does not wait for the other three), and each gets its greedy tokens; with
    --batch-invariant each is read alone."""
    model, tokenizer = tiny_lm
    model = in_precision(model, precision)
    prompts = ["the cat", "a bird sang in the tree", "the dog ate the", "mat"]
    for invariant in (False, True):
        scheduler = Scheduler(model, tokenizer, max_batch=4, max_context=64, batch_invariant=invariant)
        batches = []
        prefill = scheduler._prefill
        scheduler._prefill = lambda batch, log=batches, run=prefill: (log.append(len(batch)), run(batch))
        scheduler.start()
        try:
            with scheduler.condition:  # all admitted before the first pass
                collectors = [submit(scheduler, tokenizer, prompt, 6)[1] for prompt in prompts]
            assert all(c.done.wait(30) for c in collectors)
        finally:
            scheduler.stop()
        assert batches == ([1, 1, 1, 1] if invariant else [4])
        for prompt, c in zip(prompts, collectors, strict=True):
            ids = torch.tensor(tokenizer.encode(prompt))
            alone = model.generate(ids[None], max_new_tokens=6)[0, len(ids) :]
            served = tokenizer.encode(c.text)
            depth = model.config.num_layers
            assert_same_greedy_tokens(next_scores(model, ids), served, alone, precision, depth, prompt)


@pytest.mark.cpu_class
@pytest.mark.parametrize("precision", PRECISIONS)
def test_requests_beyond_the_blocks_are_preempted_and_still_get_their_greedy_tokens(tiny_lm, precision):
    """A pool of 10 blocks of 4 positions for 3 requests that need 6 each: the latest admitted is preempted when a
    step lacks a block, read again (prompt and tokens so far) once blocks are free, and every request ends with
    its greedy tokens; every block is given back at the end."""
    model, tokenizer = tiny_lm
    model = in_precision(model, precision)
    scheduler = Scheduler(model, tokenizer, max_batch=3, max_context=64, kv_blocks=10, kv_block=4)
    prompts, n = ["the cat sat", "a bird sang", "the dog ate"], 12
    scheduler.start()
    try:
        collectors = [submit(scheduler, tokenizer, prompt, n)[1] for prompt in prompts]
        assert all(c.done.wait(30) for c in collectors)
    finally:
        scheduler.stop()
    assert scheduler.metrics.preemptions._value.get() >= 1
    for prompt, c in zip(prompts, collectors, strict=True):
        assert c.last.kind == "done" and c.last.completion_tokens == n, c.last
        ids = torch.tensor(tokenizer.encode(prompt))
        alone = model.generate(ids[None], max_new_tokens=n)[0, len(ids) :]
        served = tokenizer.encode(c.text)
        assert_same_greedy_tokens(next_scores(model, ids), served, alone, precision, model.config.num_layers, prompt)
    assert scheduler.cache.used_blocks == 0 and scheduler.active == 0
    with pytest.raises(ValueError, match="need 11 key/value blocks and the server has 10"):
        scheduler.submit(Request(tokenizer.encode("the cat"), 37, Collector()))


def test_under_a_pool_far_too_small_every_request_ends_and_every_block_comes_back(tiny_lm):
    """30 requests of random prompts (some alike: prefix hits), lengths and sampling, some cancelled, in a pool of 10
    blocks of 4 positions where one long request needs 9: they preempt each other many times, and still every one
    ends — done, or cancelled — none with an error, and every block but the prefix cache's is back."""
    import random

    model, tokenizer = tiny_lm
    rng = random.Random(0)
    scheduler = Scheduler(model, tokenizer, max_batch=4, max_context=64, max_queue=100, kv_blocks=10, kv_block=4,
                          prefix_cache_tokens=16, prefill_chunk=8)  # fmt: skip
    texts = ["the cat sat on the mat", "the cat sat on the", "a bird", "the dog ate the bone", "mat"]
    scheduler.start()
    try:
        requests = []
        for i in range(30):
            prompt = tokenizer.encode(rng.choice(texts))
            options = {"temperature": rng.choice([0, 0.8]), "seed": i}
            requests.append(Request(prompt, rng.randint(1, 36 - len(prompt)), Collector(), **options))
            scheduler.submit(requests[-1])
            if rng.random() < 0.1:
                scheduler.cancel(requests[rng.randrange(len(requests))])
        deadline = time.monotonic() + 60
        while (scheduler.active or scheduler.waiting) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        scheduler.stop()
    ended = [r for r in requests if r.deliver.done.is_set()]
    assert all(r.deliver.last.kind == "done" for r in ended)
    assert all(r.cancelled for r in requests if not r.deliver.done.is_set()) and len(ended) >= 20
    # admission control keeps requests in the queue rather than let them take blocks back and forth: 10 preemptions
    # here (seeds 1-3: 12-18), 46-80 without it
    assert 1 <= scheduler.metrics.preemptions._value.get() <= 25
    assert scheduler.cache.used_blocks == scheduler.prefix.blocks and sorted(scheduler.free_slots) == [0, 1, 2, 3]


def test_beside_running_requests_one_is_admitted_only_when_the_pool_has_room_for_it(tiny_lm):
    """Admission control: with requests holding slots, a queued request is admitted when the free blocks (and those
    only the prefix cache holds, less those it would reuse) cover what it reads, its first new position, and one
    block more for each request holding a slot; alone, always."""
    model, tokenizer = tiny_lm
    scheduler = Scheduler(model, tokenizer, max_batch=3, max_context=64, kv_blocks=10, kv_block=4)
    request = lambda tokens: Request(tokens, 4, Collector())  # noqa: E731
    assert scheduler._has_room(request([1] * 31))  # nothing else holds a slot
    scheduler.running[0] = running = request([1, 2, 3])
    running.slot = 0
    scheduler.cache.reserve(0, 12)  # 3 blocks: 7 free
    assert scheduler._has_room(request([1] * 23))  # 6 blocks for 23 tokens and the next, 1 for the running one
    assert not scheduler._has_room(request([1] * 24))  # 7 + 1 > 7
    system = list(range(4, 24))  # 20 tokens: 5 blocks that only the prefix cache holds (2 free)
    scheduler.cache.reserve(1, 20)
    scheduler.prefix.store(1, system)
    scheduler.cache.free(1)
    assert scheduler._has_room(request([1] * 23)) and not scheduler._has_room(request([1] * 24))  # idle ones count
    assert scheduler._has_room(request(system + [1] * 3))  # 5 blocks reused: 1 more, and 1 for the running one
    assert not scheduler._has_room(request(system + [1] * 7))  # 2 more: the blocks it reuses are not room


def test_a_quantized_model_s_batched_steps_give_each_request_its_greedy_tokens(tiny_lm, monkeypatch, fused_steps):
    """int4 weights: the scheduler's steps over slots of different lengths run the fused decoding step
    (glassformer.generation.fused_step) where it is available, and every request still gets the tokens the modules
    give it alone."""
    import copy

    from glassformer.generation import fused_step

    model, tokenizer = tiny_lm
    model = copy.deepcopy(model).quantize("int4")
    prompts, lengths = ["the cat", "a bird sang in the", "mat", "sat on the mat. the"], [12, 6, 15, 9]
    s = Scheduler(model, tokenizer, max_batch=3, max_context=64, max_queue=8)
    s.start()
    try:
        collectors = []
        for prompt, n in zip(prompts, lengths, strict=True):
            collectors.append(submit(s, tokenizer, prompt, n)[1])
            time.sleep(0.01)
        assert all(c.done.wait(30) for c in collectors)
    finally:
        s.stop()
    if kernels.kernel_works("quantized_decoder_step"):
        assert fused_steps and all(fused_steps)
    monkeypatch.setattr(fused_step, "step", lambda *args: None)  # the modules alone
    for prompt, n, c in zip(prompts, lengths, collectors, strict=True):
        assert c.text == greedy_text(model, tokenizer, prompt, n), prompt


@pytest.mark.cpu_class
@pytest.mark.skipif(not kernels.kernel_works("quantized_decoder_step"), reason="no fused decoding step here")
def test_with_the_fused_step_a_prompt_s_chunks_ride_in_the_running_requests_steps(tiny_lm, monkeypatch):
    """Chunked prefill inside the decoding step: with the fused step (int4 weights) a 42-token prompt arriving while
    another request decodes is read 4 tokens at a time as more rows of that request's steps — no pass of its own —
    and both get the greedy tokens the modules give each alone."""
    import copy

    from glassformer.generation import fused_step

    model, tokenizer = tiny_lm
    model = copy.deepcopy(model).quantize("int4")
    scheduler = Scheduler(model, tokenizer, max_batch=3, max_context=64, prefill_chunk=4)
    assert scheduler.step.kind == "fused" and scheduler.step.row_limit == 64
    log, mixed, prefill = [], scheduler.step.mixed, scheduler._prefill
    scheduler._prefill = lambda batch: (log.append("pass"), prefill(batch))
    monkeypatch.setattr(type(scheduler.step), "mixed", lambda step, parts, cache: (
        log.append([len(tokens) for _, tokens in parts]), mixed(parts, cache))[1])  # fmt: skip
    reading, first, second = long_prompt_beside_a_running_request(scheduler, tokenizer)
    assert log[:2] == ["pass", "pass"]  # the first prompt (6 tokens), read while nothing decoded
    size = len(reading.prompt)  # then the long one, 4 tokens a step beside the running request's token
    assert size == 42 and log[2:] == [[1, 4]] * 10 + [[1, 2]]
    assert scheduler.metrics.registry.get_sample_value("glassformer_riding_prompt_tokens_total") == size
    monkeypatch.setattr(fused_step, "step", lambda *args: None)  # the modules alone
    for prompt, n, collector in (("a bird", 40, first), (LONG_PROMPT, 5, second)):
        assert collector.text == greedy_text(model, tokenizer, prompt, n), prompt


@pytest.mark.cpu_class
@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_prompt_that_starts_like_an_earlier_one_reads_only_the_rest(tiny_lm, precision):
    """Prefix caching: the second prompt's blocks in common with the first are shared, not run; the first chunk it
    runs starts after them, and both answers are their greedy tokens."""
    model, tokenizer = tiny_lm
    model = in_precision(model, precision)
    scheduler = Scheduler(model, tokenizer, max_batch=2, max_context=64, prefix_cache_tokens=128, kv_block=8)
    starts = []
    prefill = scheduler._prefill
    scheduler._prefill = lambda batch: (starts.append(batch[0].prefilled), prefill(batch))
    scheduler.start()
    first, second = "the cat sat on the mat. the dog ate the bone.", "the cat sat on the mat. the dog sang in a tree"
    try:
        collectors = []
        for prompt in (first, second):
            collectors.append(submit(scheduler, tokenizer, prompt, 6)[1])
            assert collectors[-1].done.wait(30)
    finally:
        scheduler.stop()
    a, b = tokenizer.encode(first), tokenizer.encode(second)
    common = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    assert starts == [0, common // 8 * 8] and common // 8 * 8 >= 24
    assert scheduler.metrics.prefix_hit_tokens._value.get() == common // 8 * 8
    assert scheduler.cache.used_blocks == scheduler.prefix.blocks  # the requests' own blocks given back
    for prompt, collector in zip((first, second), collectors, strict=True):
        ids = torch.tensor(tokenizer.encode(prompt))
        alone = model.generate(ids[None], max_new_tokens=6)[0, len(ids) :]
        served = tokenizer.encode(collector.text)
        assert_same_greedy_tokens(next_scores(model, ids), served, alone, precision, model.config.num_layers, prompt)


def test_the_prefix_cache_holds_blocks_keeps_the_heads_of_prompts_longest_and_gives_them_back_when_short():
    cache = SlotCache(num_layers=1, slots=2, num_heads=1, max_length=16, head_dim=2, block=4)  # 8 blocks
    prefix = PrefixCache(cache, capacity=2)
    a = list(range(12))
    cache.reserve(0, 12)
    cache.lengths[0] = 12
    prefix.store(0, a)  # 3 full blocks, room for 2: the first two, held (no copy)
    head = cache.tables[0][:2]
    assert [cache.refs[b] for b in cache.tables[0]] == [2, 2, 1]
    assert prefix.match(a) == head and len(prefix.match(a[:8])) == 1  # the last token is always left to run
    assert prefix.restore(1, prefix.match(a)) == 8 and cache.lengths[1] == 8 and cache.tables[1] == head
    cache.free(0), cache.free(1)
    assert cache.used_blocks == 2  # the prefix cache's, kept for later prompts
    cache.reserve(0, 5)
    cache.lengths[0] = 5
    prefix.store(0, [50, 51, 52, 53, 54])  # a new prompt's block: a's tail block goes, its head stays
    assert len(prefix.match(a)) == 1 and len(prefix.match([50, 51, 52, 53, 54])) == 1
    assert len(prefix.match([9, *a])) == 0  # the same blocks at other positions are other blocks
    cache.free(0)
    cache.reserve(0, 16), cache.reserve(1, 16)  # every block wanted: those only the prefix cache holds come back
    assert prefix.blocks == 0 and cache.used_blocks == 8
    assert PrefixCache(cache, capacity=0).match(a) == []


def test_a_steps_events_cross_to_the_event_loop_in_one_hand_over_and_in_order(monkeypatch):
    """Events posted from the scheduler's thread inside ``deliveries_held`` wake the loop once, at its end; an event
    posted alone wakes it by itself; the loop receives them all in order."""
    import asyncio

    from glassformer.serving.requests import Mailbox, deliveries_held, mailbox

    wakes = []
    wake = Mailbox.wake
    monkeypatch.setattr(Mailbox, "wake", lambda self: (wakes.append(1), wake(self)))

    async def main():
        box, queue = mailbox(asyncio.get_running_loop()), asyncio.Queue()

        def step():
            with deliveries_held():
                for i in range(8):
                    box.post(queue, i)
                assert wakes == []  # held: nothing woken yet
            assert len(wakes) == 1

        await asyncio.to_thread(step)
        got = [await asyncio.wait_for(queue.get(), 5) for _ in range(8)]
        await asyncio.to_thread(box.post, queue, 8)
        got.append(await asyncio.wait_for(queue.get(), 5))
        return got

    assert asyncio.run(main()) == list(range(9))
    assert len(wakes) == 2


def test_requests_with_the_same_prompt_read_it_once_and_each_gets_its_own_tokens(tiny_lm):
    """n > 1 choices (or identical prompts arriving together): the prompt runs through the model once, the others'
    slots get a copy of its keys and values; greedy choices all get generate's tokens, seeded sampled ones the
    tokens they get alone."""
    model, tokenizer = tiny_lm
    prompt = "the cat sat on the mat. the"
    ids = torch.tensor(tokenizer.encode(prompt))

    def serve(options_list):
        scheduler = Scheduler(model, tokenizer, max_batch=4, max_context=64, prefix_cache_tokens=0)
        chunks = []
        prefill = scheduler._prefill
        scheduler._prefill = lambda batch: (chunks.append(batch), prefill(batch))
        scheduler.start()
        try:
            shared = tokenizer.encode(prompt)  # one list for all, as the API's n choices get it
            collectors = [Collector() for _ in options_list]
            requests = [Request(shared, 8, c, **o) for c, o in zip(collectors, options_list, strict=True)]
            with scheduler.condition:  # all admitted before the first chunk runs
                for request in requests:
                    scheduler.submit(request)
            assert all(c.done.wait(30) for c in collectors)
        finally:
            scheduler.stop()
        return [tokenizer.encode(c.text) for c in collectors], chunks, scheduler

    greedy = model.generate(ids[None], max_new_tokens=8)[0, len(ids) :].tolist()
    options = [{}, {}, {"temperature": 0.9, "seed": 5}, {"temperature": 0.9, "seed": 6}]
    served, chunks, scheduler = serve(options)
    assert len(chunks) == 1  # one forward pass over the prompt for all four
    assert scheduler.metrics.shared_prompt_tokens._value.get() == 3 * len(ids)
    assert served[0] == served[1] == greedy
    for i in (2, 3):  # each sampled one as it is alone
        alone, _, _ = serve([options[i]])
        assert served[i] == alone[0]


@pytest.mark.parametrize("quantized", [None, "int4", "int4, bf16 activations"])
def test_prompt_lookup_speculation_keeps_the_answers_and_counts_its_drafts(tiny_lm, quantized, monkeypatch):
    """``prompt_lookup`` (--prompt-lookup): a request running alone checks drafted tokens a block at a time over its
    slot (quantized: the fused step's block); a greedy answer is the plain one token for token — with bfloat16
    activations up to a near-tie, as the blocks of 4 or more rows multiply in bfloat16 and single steps do not —, a
    seeded sampled one what generate samples with the same speculation; drafts and accepted drafts are counted."""
    import copy

    from glassformer.generation import fused_step

    model, tokenizer = tiny_lm
    if quantized:
        model = copy.deepcopy(model).quantize("int4", 32, activations="bf16" if "bf16" in quantized else None)
    prompt = "the cat sat on the mat. the cat sat on the"
    ids = torch.tensor([tokenizer.encode(prompt)])
    scheduler = Scheduler(model, tokenizer, max_batch=2, max_context=64, prompt_lookup=4)
    fused_blocks, fused_block = [], fused_step.block
    monkeypatch.setattr(fused_step, "block", lambda *a: (r := fused_block(*a), fused_blocks.append(r is not None))[0])
    block = scheduler.step.block
    blocks = []
    scheduler.step.block = lambda tokens, cache: (blocks.append(tokens.size(1)), block(tokens, cache))[1]
    scheduler.start()
    try:
        greedy = submit(scheduler, tokenizer, prompt, 20)[1]
        assert greedy.done.wait(30)
        sampled = submit(scheduler, tokenizer, prompt, 20, temperature=0.8, seed=3)[1]
        assert sampled.done.wait(30)
    finally:
        scheduler.stop()
    served_blocks = list(fused_blocks)  # generate's own blocks below are not the server's
    plain = model.generate(ids, max_new_tokens=20)[0, ids.size(1) :]
    if quantized and "bf16" in quantized:
        depth = model.config.num_layers
        assert_same_greedy_tokens(next_scores(model, ids), tokenizer.encode(greedy.text), plain, "bf16", depth)
    else:
        assert greedy.text == tokenizer.decode(plain.tolist(), skip_special_tokens=True)
    speculated = model.generate(ids, max_new_tokens=20, do_sample=True, temperature=0.8, seed=3,
                                prompt_lookup_num_tokens=4)[0, ids.size(1) :]  # fmt: skip
    assert sampled.text == tokenizer.decode(speculated.tolist(), skip_special_tokens=True)
    drafted, accepted = scheduler.metrics.draft_tokens._value.get(), scheduler.metrics.accepted_tokens._value.get()
    assert blocks and drafted >= len(blocks) and 0 < accepted <= drafted
    assert greedy.last.completion_tokens == sampled.last.completion_tokens == 20
    assert served_blocks == ([True] * len(blocks) if quantized else [])  # the fused step checked every block
