"""Every flag of every command reaches the library: giving it a value other than its default changes the calls
the command makes into glassformer (the library's entry points replaced by recorders), flag by flag.

The flags are read from the parser itself, so a flag added later is tested too — or named below with the reason
why it changes only the command's own output.
"""

import argparse
import re
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from glassformer import runtime
from glassformer.cli.main import build_parser, main

OUTPUT_ONLY = {"--json": "the output's format (JSON lines instead of text)"}


def fake_model_and_tokenizer():
    model, tokenizer = mock.MagicMock(), mock.MagicMock()
    tokenizer.encode.return_value = [1, 2]
    tokenizer.decode.return_value = "text"
    tokenizer.chat_template = "{{ messages }}"
    tokenizer.apply_chat_template.return_value = "prompt"
    model.generate.return_value = torch.tensor([[1, 2, 3]])
    model.config = SimpleNamespace(eos_token_id=0, max_seq_length=1000)
    return model, tokenizer


def classifier():
    fake = mock.MagicMock()
    fake.predict.return_value = [SimpleNamespace(text="t", label="positive", probability=0.9, probabilities={})]
    return fake


def encoder():
    fake = mock.MagicMock()
    fake.embed.return_value = torch.zeros(1, 4)
    fake.similarity.return_value = torch.eye(2)
    return fake


def view(name: str = "self"):
    return SimpleNamespace(name=name, weights=torch.zeros(1, 1, 2, 2))


EVALUATION = dict(split="test", pairs=1, beam=1, bleu=1.0, chrf=1.0, seconds=1, bleu_detail="BLEU")
TORCHRUN = "glassformer.training.launch.run_torchrun"  # --nproc-per-node N: the command again, on N processes
LANGUAGE_MODEL = ("glassformer.cli.generate.load_language_model", "glassformer.cli.chat.load_language_model")

# command -> (its arguments when only the required ones are given, {entry point: what the recorder returns})
COMMANDS = {
    "train lm": (["--out", "runs/x"], {"glassformer.training.lm.train_language_model": dict(
        step=1, valid_loss=1, valid_ppl=2, parameters=3), TORCHRUN: 0}),
    "train translate": (["--out", "runs/x"], {"glassformer.training.translation.train_translation": {}, TORCHRUN: 0}),
    "train classify": (["--out", "runs/x"], {"glassformer.training.classification.train_classifier": {},
                                             TORCHRUN: 0}),
    "translate": (["--model", "m", "hallo"], {"glassformer.pipelines.translator.Translator.load": "translator",
                                              "glassformer.visualization.alignment.alignments": None,
                                              "glassformer.visualization.alignment.save_alignment_html": "a.html"}),
    "evaluate": (["--model", "m"], {"glassformer.training.evaluation.evaluate_translation": EVALUATION}),
    "generate": (["--model", "m", "--prompt", "p"], {LANGUAGE_MODEL[0]: "language model"}),
    "chat": ([], {LANGUAGE_MODEL[1]: "language model"}),
    "classify": (["--model", "m", "good"], {"glassformer.pipelines.text_classifier.TextClassifier.load": "classifier"}),
    "embed": (["good"], {"glassformer.pipelines.sentence_encoder.SentenceEncoder.from_pretrained": "encoder"}),
    "similarity": (["a", "b"], {"glassformer.pipelines.sentence_encoder.SentenceEncoder.from_pretrained": "encoder"}),
    "visualize": (["the cat", "--model", "m"], {"glassformer.visualization.attention_views": "views",
                                                 "glassformer.visualization.save_attention_html": "page.html",
                                                 "glassformer.visualization.figures.attention_figure": "a.png"}),
    "figures": (["positional-encoding", "-o", "pe.png"],
                {"glassformer.visualization.figures.positional_encoding_figure": "pe.png",
                 "glassformer.visualization.figures.training_curves_figure": "c.png",
                 "glassformer.visualization.figures.attention_figure": "a.png",
                 "glassformer.visualization.attention_views": "views"}),
    "data get": (["bible"],
                 {"glassformer.data.bible.prepare_bible": {}, "glassformer.data.sentiment.prepare_sentiment": {}}),
    "env": ([], {"glassformer.runtime.environment": {"torch": "x"}, "glassformer.runtime.env_line": "line"}),
    "tour": ([], {"glassformer.cli.tour.run_tour": None}),
    "serve": ([], {"glassformer.cli.serve.check_port": None, "glassformer.cli.serve.resolve_model": "m",
                   "glassformer.serving.state.Server": "server",
                   "glassformer.serving.app.create_app": None, "uvicorn.Config": None, "uvicorn.Server": "uvicorn"}),
}  # fmt: skip
RETURNS = {"translator": lambda: mock.MagicMock(**{"translate.return_value": ["hello"]}),
           "language model": fake_model_and_tokenizer, "classifier": classifier, "encoder": encoder,
           "views": lambda: [view("encoder"), view("cross")], "server": lambda: mock.MagicMock(error=None),
           "uvicorn": mock.MagicMock}  # fmt: skip
# flags that act only with another first argument
BASES = {("figures", "--layer"): ["attention", "the", "--model", "m", "-o", "a.png"],
         ("figures", "--head"): ["attention", "the", "--model", "m", "-o", "a.png"],
         ("figures", "--view"): ["attention", "the", "--model", "m", "-o", "a.png"],
         ("figures", "--model"): ["attention", "the", "--model", "m", "-o", "a.png"],
         ("figures", "--run"): ["curves", "-o", "c.png", "--run", "runs/a"],
         ("figures", "--precision"): ["attention", "the", "--model", "m", "-o", "a.png"],
         ("figures", "--device"): ["attention", "the", "--model", "m", "-o", "a.png"],
         ("data get", "--domain"): ["sentiment"]}  # fmt: skip

# --group-size and --quantize-embeddings/-activations refine --quantize
for _command in ("translate", "evaluate", "generate", "chat", "classify", "embed", "similarity", "serve"):
    for _flag in ("--group-size", "--quantize-embeddings", "--quantize-activations"):
        BASES[_command, _flag] = [*COMMANDS[_command][0], "--quantize", "int8"]


VALUES = {("figures", "--view"): "cross", ("translate", "--attention"): "align.html"}  # values the command accepts
VALUES[("train translate", "--optimizer")] = "muon"  # its default (None) means the recipe's, adam: not "adam"
VALUES.update({(command, "--device"): "cpu" for command in ("train lm", "train translate", "train classify")})


def subparsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subparsers(sub, (*prefix, name))
            return
    yield " ".join(prefix), parser


def flags(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if action.option_strings and action.help != argparse.SUPPRESS and action.dest not in ("help", "version"):
            yield action


def other_value(command: str, action: argparse.Action) -> list[str]:
    flag = action.option_strings[-1]
    if (command, flag) in VALUES:
        return [flag, VALUES[command, flag]]
    if action.nargs == 0:
        return [flag]
    if flag == "--precision":  # one that auto does not resolve to here
        return [flag, "fp16" if runtime.place("auto", "auto").precision != "fp16" else "bf16"]
    if action.choices:
        return [flag, next(str(c) for c in action.choices if c != action.default)]
    default = action.default
    if action.type is int:
        return [flag, str(default + 1 if isinstance(default, int) else 3)]
    if action.type is float:
        return [flag, str(default * 0.5 if default else 0.25)]
    return [flag, f"{default}-other" if default else "other"]


CASES = [
    (command, action.option_strings[-1], action)
    for command, parser in subparsers(build_parser())
    for action in flags(parser)
]


ORIGINALS: dict[str, object] = {}


def _resolve(target: str):
    """The object a dotted name (module path, then attributes) names."""
    import importlib

    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(target)


def recorded_calls(command: str, argv: list[str], monkeypatch, capsys, tmp_path) -> str:
    """Run the command with its entry points replaced by recorders; every call they saw, as text."""
    recorders = []
    for target, returned in COMMANDS[command][1].items():
        value = RETURNS[returned]() if isinstance(returned, str) and returned in RETURNS else returned
        original = ORIGINALS.setdefault(target, _resolve(target))  # before the first patch of this test
        recorder = mock.create_autospec(original, return_value=value)  # the same signature: defaults still read
        parent = getattr(recorder, "mock", recorder)
        for i, returned in enumerate(value if isinstance(value, tuple) else [value]):
            if isinstance(returned, mock.Mock):  # what the command does with what it got back is recorded too
                parent.attach_mock(returned, f"returned{i}")
        monkeypatch.setattr(target, recorder)
        recorders.append(recorder)
    stdin = {"isatty.return_value": False, "readline.side_effect": ["hello\n", ""], "__iter__.return_value": iter([])}
    monkeypatch.setattr("sys.stdin", mock.MagicMock(**stdin))
    monkeypatch.chdir(tmp_path)
    code = main([*command.split(), *argv])
    capsys.readouterr()
    assert code == 0, f"glassformer {command} {' '.join(argv)} failed"
    calls = "\n".join(str(recorder.mock_calls) for recorder in recorders)
    return re.sub(r"0x[0-9a-f]+|id='\d+'", "", calls)  # objects' addresses differ from run to run


@pytest.mark.parametrize("command, flag, action", CASES, ids=[f"{c}-{f}" for c, f, _ in CASES])
def test_the_flag_changes_the_library_call(command, flag, action, monkeypatch, capsys, tmp_path):
    if flag in OUTPUT_ONLY:
        pytest.skip(f"{flag} sets {OUTPUT_ONLY[flag]}, not a library call")
    if flag == "--device" and not command.startswith("train") and not torch.cuda.is_available():
        pytest.skip("without a GPU every accepted --device resolves to the CPU (tests/cli/test_device_flags.py)")
    assert command in COMMANDS, f"a new command {command!r}: add its entry points to COMMANDS"
    base = BASES.get((command, flag), COMMANDS[command][0])
    default = recorded_calls(command, base, monkeypatch, capsys, tmp_path)
    changed = recorded_calls(command, [*base, *other_value(command, action)], monkeypatch, capsys, tmp_path)
    assert changed != default, f"glassformer {command} {flag}: the library calls are the same as without it"
