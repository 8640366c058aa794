"""Every option's type and range, checked in one place.

One name means one idea across glassformer — ``dropout`` is a probability wherever it appears, ``batch_size`` a
positive integer — so the rule for a name is written once, in ``RULES``, and every config dataclass
(``check_fields``), every function that takes loose arguments (``check_options``) and every command-line flag
(the CLI passes flags through to those) is held to it. The two cannot drift: there is nothing else to drift.

    check_fields(config)          each field's declared type (int, float, bool, str, X | None, tuple[...]) and,
                                  where its name has a rule, its range; floats must be finite
    check_options(batch_size=8)   the same for keyword arguments, by name

A failure is an ``OptionError`` (a ``ValueError``) naming the option, what it must be and what it got.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any


class OptionError(ValueError):
    """An option or config field outside its type or range. ``name`` is the option's name."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


@dataclasses.dataclass(frozen=True)
class Rule:
    """A number's range: ``low <= x`` (``low_open``: ``low < x``) and ``x <= high`` (``high_open``: ``x < high``);
    ``integer``: a whole number; ``none_means``: what None stands for, where None is allowed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    none_means: str | None = None

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.integer and self.low == 1 and self.high is None:
            return "a positive integer"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_number(self.low)}"
        return f"a finite {kind[2:] if kind.startswith('a ') else kind[3:]}"

    def admits(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


MAX_CONTEXT = 1 << 20  # positions a model may have: beyond, its position tables alone would not fit in memory


def _number(value: float) -> str:
    return f"{value:,}" if float(value).is_integer() and abs(value) >= 100_000 else f"{value:g}"


POSITIVE_INT = Rule(low=1, integer=True)
COUNT = Rule(low=0, integer=True)  # zero allowed
POSITIVE = Rule(low=0, low_open=True)
NON_NEGATIVE = Rule(low=0)
PROBABILITY = Rule(low=0, high=1, high_open=True)  # dropout, label smoothing: 1 would erase everything
FRACTION = Rule(low=0, high=1)

RULES: dict[str, Rule] = {
    # shapes
    **dict.fromkeys(
        (
            "d_model",
            "num_heads",
            "num_layers",
            "num_decoder_layers",
            "d_ff",
            "num_kv_heads",
            "head_dim",
            "vocab_size",
            "src_vocab_size",
            "tgt_vocab_size",
            "relative_max_distance",
            "num_labels",
            "max_length",
            "max_tokens",
            "block_size",
        ),
        POSITIVE_INT,
    ),  # fmt: skip
    "max_seq_length": Rule(low=1, high=MAX_CONTEXT, integer=True),  # position tables are sized by it
    "relative_buckets": Rule(low=2, integer=True),
    "type_vocab_size": COUNT,
    # numerics of the parts
    **dict.fromkeys(("layer_norm_eps", "rope_theta", "attention_scale", "eps"), POSITIVE),
    **dict.fromkeys(("dropout", "attention_dropout", "activation_dropout", "classifier_dropout"), PROBABILITY),
    "label_smoothing": PROBABILITY,
    # training
    **dict.fromkeys(
        (
            "max_steps",
            "grad_accum",
            "eval_every",
            "log_every",
            "batch_size",
            "patience",
            "evals_per_epoch",
            "schedule_steps",
            "limit",
        ),
        POSITIVE_INT,
    ),  # fmt: skip
    "warmup_steps": COUNT,
    "seed": Rule(low=0, high=2**63 - 1, integer=True),
    "lr": POSITIVE,
    "max_minutes": POSITIVE,
    "epochs": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "grad_clip": Rule(low=0, none_means="no clipping"),
    "min_lr_ratio": FRACTION,
    "warmdown_fraction": FRACTION,
    "muon_lr": POSITIVE,
    "muon_momentum": Rule(low=0, high=1, high_open=True),
    "warmup": FRACTION,
    "layer_decay": Rule(low=0, high=1, low_open=True),
    "betas": PROBABILITY,  # each of the pair
    # generation
    "max_new_tokens": POSITIVE_INT,
    "min_new_tokens": COUNT,
    "num_beams": POSITIVE_INT,
    "num_return_sequences": POSITIVE_INT,
    "top_k": COUNT,
    "top_p": Rule(low=0, high=1, low_open=True),
    "temperature": NON_NEGATIVE,
    "repetition_penalty": POSITIVE,
    "presence_penalty": Rule(low=-2, high=2),  # OpenAI's range
    "prompt_lookup_num_tokens": POSITIVE_INT,
    "max_matching_ngram_size": POSITIVE_INT,
    "num_assistant_tokens": POSITIVE_INT,
    "frequency_penalty": Rule(low=-2, high=2),
    "no_repeat_ngram_size": COUNT,
    "length_penalty": Rule(),
    # serving
    **dict.fromkeys(("max_batch", "max_context", "max_queue", "nproc_per_node", "prefill_chunk"), POSITIVE_INT),
    "request_timeout": POSITIVE,
    "prefix_cache_tokens": Rule(low=0, integer=True),
    "kv_blocks": POSITIVE_INT,
    "prompt_lookup": Rule(low=0, integer=True),
    "port": Rule(low=0, high=65535, integer=True),
    # token ids (the vocabulary's upper bound is checked where the vocabulary is known)
    **dict.fromkeys(("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id"), COUNT),
}


def check_value(name: str, value: Any, expected: Any = None) -> None:
    """Check ``value`` against the declared type ``expected`` (a typing form; None: from the rule only) and the
    range of ``RULES[name]``; an ``OptionError`` naming ``name`` otherwise."""
    rule = RULES.get(name)
    if value is None:
        if expected is None or _allows_none(expected):
            return
        raise OptionError(name, f"{name} must be given, got None")
    if _is_tuple(expected):
        if not isinstance(value, tuple | list):
            raise OptionError(name, f"{name} must be a tuple, got {value!r}")
        for item in value:
            check_value(name, item, _tuple_item(expected))
        return
    kind = _scalar_kind(expected) or ((int if rule.integer else float) if rule else None)
    if kind is bool and not isinstance(value, bool):
        raise OptionError(name, f"{name} must be True or False, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise OptionError(name, f"{name} must be a string, got {value!r}")
    if kind in (int, float):
        integer = kind is int or (rule is not None and rule.integer)
        number_types = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, number_types):
            raise OptionError(name, f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
        if not math.isfinite(value):
            raise OptionError(name, f"{name} must be a finite number, got {value!r}")
        if rule is not None and not rule.admits(value):
            none = f" (or None for {rule.none_means})" if rule.none_means else ""
            raise OptionError(name, f"{name} must be {rule.describe()}{none}, got {value!r}")


def check_options(**options: Any) -> None:
    """``check_value`` for each keyword argument by its name's rule in ``RULES`` (None passes: "the default")."""
    for name, value in options.items():
        if name not in RULES:
            raise KeyError(f"no rule for option {name!r} in glassformer.options.RULES")
        check_value(name, value)


def check_fields(config: Any) -> None:
    """Check every field of the dataclass instance ``config`` against its declared type and its name's rule."""
    hints = _type_hints(type(config))
    for field in dataclasses.fields(config):
        check_value(field.name, getattr(config, field.name), hints.get(field.name))


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that cannot be resolved: check ranges only
        return {}


def _union_args(expected: Any) -> tuple:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return typing.get_args(expected)
    return (expected,)


def _allows_none(expected: Any) -> bool:
    return expected is Any or type(None) in _union_args(expected)


def _scalar_kind(expected: Any) -> type | None:
    kinds = [a for a in _union_args(expected) if a in (bool, int, float, str)]
    return kinds[0] if len(kinds) == 1 else None


def _is_tuple(expected: Any) -> bool:
    return any(typing.get_origin(a) in (tuple, list) for a in _union_args(expected))


def _tuple_item(expected: Any) -> Any:
    for a in _union_args(expected):
        if typing.get_origin(a) in (tuple, list):
            args = [x for x in typing.get_args(a) if x is not Ellipsis]
            return args[0] if args else None
    return None
