"""``/metrics`` in Prometheus's text format (``prometheus_client``), one registry per server:

    glassformer_time_to_first_token_seconds      histogram: submitted -> first token
    glassformer_inter_token_seconds              histogram: between two tokens of one request
    glassformer_requests_running / _waiting      gauges: slots in use, queue depth
    glassformer_prompt_tokens_total              counter: prompt tokens admitted
    glassformer_prefix_cache_hit_tokens_total    counter: of those, tokens whose keys/values came from the prefix cache
    glassformer_prefix_cache_blocks              gauge: blocks the prefix cache holds
    glassformer_kv_blocks_used / _free           gauges: the paged cache's blocks in use (by sequences or the prefix
                                                 cache) and free
    glassformer_preemptions_total                counter: requests preempted when the blocks ran out (read again later)
    glassformer_speculative_draft_tokens_total   counter: tokens drafted by prompt lookup (--prompt-lookup)
    glassformer_speculative_accepted_tokens_total  counter: of those, accepted (the acceptance rate)
    glassformer_shared_prompt_tokens_total       counter: prompt tokens copied from a request with the same prompt
                                                 (``n`` > 1 choices, identical prompts) instead of being run
    glassformer_generated_tokens_total           counter: tokens generated
    glassformer_requests_total{outcome}          counter: finished, cancelled, timed_out, rejected, failed
    glassformer_decoding_steps_total             counter: batched decoding steps
    glassformer_step_seconds                     histogram: a decoding step, model and sampler (tokens read back)
    glassformer_step_emit_seconds                histogram: then the step's per-token work on the scheduler's
                                                 thread: detokenizing, stop strings, events to the HTTP side

The scheduler's thread records into it; the HTTP route renders it.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
OUTCOMES = ("finished", "cancelled", "timed_out", "rejected", "failed")


class Metrics:
    """The server's Prometheus metrics; ``running`` and ``waiting`` are read when scraped."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        running: Callable[[], int],
        waiting: Callable[[], int],
        prefix_blocks: Callable[[], int],
        used_blocks: Callable[[], int],
        free_blocks: Callable[[], int],
    ):
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("glassformer_time_to_first_token_seconds", "Time from a request's arrival to its "
                              "first token", buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.inter_token = Histogram("glassformer_inter_token_seconds", "Time between two tokens of one request",
                                     buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        Gauge("glassformer_requests_running", "Requests holding a slot", registry=r).set_function(running)
        Gauge("glassformer_requests_waiting", "Requests in the queue", registry=r).set_function(waiting)
        self.prompt_tokens = Counter("glassformer_prompt_tokens", "Prompt tokens admitted", registry=r)
        self.prefix_hit_tokens = Counter("glassformer_prefix_cache_hit_tokens", "Prompt tokens whose keys and "
                                         "values came from the prefix cache", registry=r)  # fmt: skip
        Gauge("glassformer_prefix_cache_blocks", "Blocks in the prefix cache", registry=r).set_function(prefix_blocks)
        Gauge("glassformer_kv_blocks_used", "Key/value blocks in use", registry=r).set_function(used_blocks)
        Gauge("glassformer_kv_blocks_free", "Key/value blocks free", registry=r).set_function(free_blocks)
        self.preemptions = Counter("glassformer_preemptions", "Requests preempted when the key/value blocks ran "
                                   "out, to be read again", registry=r)  # fmt: skip
        self.draft_tokens = Counter("glassformer_speculative_draft_tokens", "Tokens drafted by prompt lookup "
                                    "(--prompt-lookup) and checked", registry=r)  # fmt: skip
        self.accepted_tokens = Counter("glassformer_speculative_accepted_tokens", "Drafted tokens the model "
                                       "agreed with (the acceptance rate: accepted / draft)", registry=r)  # fmt: skip
        self.shared_prompt_tokens = Counter("glassformer_shared_prompt_tokens", "Prompt tokens copied from a request "
                                            "with the same prompt instead of being run", registry=r)  # fmt: skip
        self.riding_prompt_tokens = Counter("glassformer_riding_prompt_tokens", "Prompt tokens read as rows of a "
                                            "decoding step (chunked prefill beside decoding)", registry=r)  # fmt: skip
        self.generated_tokens = Counter("glassformer_generated_tokens", "Tokens generated", registry=r)
        self.requests = Counter("glassformer_requests", "Requests ended, by outcome", ["outcome"], registry=r)
        for outcome in OUTCOMES:  # every series present from the start, at 0
            self.requests.labels(outcome)
        self.steps = Counter("glassformer_decoding_steps", "Batched decoding steps", registry=r)
        self.step_seconds = Histogram("glassformer_step_seconds", "A decoding step: the model and the sampler",
                                      buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.emit_seconds = Histogram("glassformer_step_emit_seconds", "A decoding step's per-token work after "
                                      "the sampler: text, stop strings, events", buckets=LATENCY_BUCKETS,
                                      registry=r)  # fmt: skip

    def render(self) -> bytes:
        return generate_latest(self.registry)
