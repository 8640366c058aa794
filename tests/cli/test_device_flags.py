"""``--device`` and ``--precision`` reach the library from every command that trains or runs a model: the model
that runs has the weights (or the autocast) the flag asks for, the choice is printed, and a device that is not
there is refused in one line. In-process (``glassformer.cli.main.main``) on the tiny models of conftest.py."""

import contextlib
import json
import warnings

import pytest
import torch

from glassformer import runtime
from glassformer.cli.main import main

NO_GPU = not torch.cuda.is_available()


@pytest.fixture
def placed(monkeypatch):
    """Every model ``runtime.place_model`` moves, with the placement it got."""
    calls = []
    original = runtime.place_model

    def spy(model, device=None, precision=None):
        placement = original(model, device, precision)
        calls.append((model, placement))
        return placement

    monkeypatch.setattr(runtime, "place_model", spy)
    warnings.simplefilter("ignore")  # bfloat16 may be emulated on this CPU: slow, but tiny models run
    return calls


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def inference_commands(gpt_dir, translation_dir, tiny_classification):
    _, bert = tiny_classification
    return {
        "generate": ("generate", "--model", str(gpt_dir), "--prompt", "the cat", "--max-new-tokens", "3"),
        "translate": ("translate", "--model", str(translation_dir), "the cat", "--beam", "2"),
        "classify": ("classify", "--model", str(bert), "the film was good"),
        "embed": ("embed", "--model", str(bert), "the film was good"),
        "similarity": ("similarity", "--model", str(bert), "the film was good", "the plot was bad"),
        "visualize": ("visualize", "--model", str(gpt_dir), "the cat", "-o", "{tmp}/page.html"),
        "figures attention": ("figures", "attention", "--model", str(gpt_dir), "the cat", "-o", "{tmp}/a.png"),
        "figures similarity": ("figures", "similarity", "--model", str(bert), "good", "bad", "-o", "{tmp}/s.png"),
    }


COMMANDS = ["generate", "translate", "classify", "embed", "similarity", "visualize", "figures attention",
            "figures similarity"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_inference_commands_run_the_model_as_asked(
    command, precision, placed, capsys, tmp_path, gpt_dir, translation_dir, tiny_classification
):
    argv = [
        a.replace("{tmp}", str(tmp_path))
        for a in inference_commands(gpt_dir, translation_dir, tiny_classification)[command]
    ]
    code, _, err = run(capsys, *argv, "--device", "cpu", "--precision", precision)
    assert code == 0, err
    assert placed, "the command did not place its model"
    for model, placement in placed:
        assert placement.precision == precision and placement.device.type == "cpu"
        assert next(model.parameters()).dtype == runtime.PRECISIONS[precision]  # the weights that ran
    assert f"device cpu, precision {precision}" in err  # and it says so


@pytest.mark.skipif(not NO_GPU, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("command", COMMANDS)
def test_inference_commands_refuse_a_missing_gpu(
    command, capsys, tmp_path, gpt_dir, translation_dir, tiny_classification
):
    argv = [
        a.replace("{tmp}", str(tmp_path))
        for a in inference_commands(gpt_dir, translation_dir, tiny_classification)[command]
    ]
    code, _, err = run(capsys, *argv, "--device", "cuda")
    assert code == 2 and "no CUDA GPU" in err and "Traceback" not in err


@pytest.mark.cpu_class  # auto follows the (narrowed) class
def test_auto_is_what_the_runtime_picks(placed, capsys, gpt_dir):
    code, _, err = run(capsys, "generate", "--model", str(gpt_dir), "--prompt", "the", "--max-new-tokens", "2")
    assert code == 0
    expected = runtime.place("auto", "auto")
    assert (placed[0][1].device, placed[0][1].precision) == (expected.device, expected.precision)
    assert expected.describe() in err


def test_chat_runs_the_model_as_asked(placed, capsys, monkeypatch, tmp_path, gpt_dir):
    import io
    import shutil

    directory = tmp_path / "chat-model"
    shutil.copytree(gpt_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "eos_token_id": 0}))
    tokenizer_config = directory / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text()) if tokenizer_config.is_file() else {}
    settings["chat_template"] = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    tokenizer_config.write_text(json.dumps(settings))
    monkeypatch.setattr("sys.stdin", io.StringIO("the cat\n"))
    code, out, err = run(capsys, "chat", "--model", str(directory), "--max-new-tokens", "3", "--precision", "bf16")
    assert code == 0, err
    assert "assistant>" in out and placed[0][1].precision == "bf16"
    assert next(placed[0][0].parameters()).dtype == torch.bfloat16


@pytest.fixture(scope="module")
def translation_run(tmp_path_factory, write_toy_corpus):
    folder = tmp_path_factory.mktemp("flags")
    tsv = write_toy_corpus(folder / "toy.tsv")
    return tsv, folder


TRAINING = {
    "translate": lambda data, out: ("train", "translate", "--data", str(data["tsv"]), "--out", out, "--preset", "tiny",
                                    "--vocab-size", "300", "--max-tokens", "512", "--max-steps", "2", "--eval-every",
                                    "2", "--quiet"),
    "lm": lambda data, out: ("train", "lm", "--data", str(data["text"]), "--out", out, "--preset", "tiny",
                             "--block-size", "16", "--max-steps", "2", "--eval-every", "2", "--quiet"),
    "classify": lambda data, out: ("train", "classify", "--data", str(data["reviews"]), "--init", str(data["bert"]),
                                   "--out", out, "--epochs", "0.2", "--batch-size", "16", "--max-length", "16",
                                   "--quiet"),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(TRAINING))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_commands_train_as_asked(kind, precision, capsys, monkeypatch, tmp_path, write_toy_corpus,
                                          tiny_classification):  # fmt: skip
    """The trainer runs each loss under the autocast the flag asks for (fp32: none), on the device asked for."""
    from glassformer.training.loop import Trainer

    seen = []
    original = Trainer._autocast

    @contextlib.contextmanager
    def spy(self):
        with original(self):  # what the loss runs under
            seen.append((torch.is_autocast_enabled("cpu"), self.placement))
            yield

    monkeypatch.setattr(Trainer, "_autocast", spy)
    warnings.simplefilter("ignore")
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 40)
    data = {"tsv": write_toy_corpus(tmp_path / "toy.tsv"), "text": text, "reviews": tiny_classification[0],
            "bert": tiny_classification[1]}  # fmt: skip
    out = tmp_path / "run"
    code, _, err = run(capsys, *TRAINING[kind](data, str(out)), "--device", "cpu", "--precision", precision)
    assert code == 0, err
    assert seen and all(autocast == (precision != "fp32") for autocast, _ in seen)
    assert all(p.precision == precision and p.device.type == "cpu" for _, p in seen)
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first == {"step": 0, "device": "cpu", "precision": precision}


@pytest.mark.skipif(not NO_GPU, reason="this machine has a CUDA GPU")
def test_training_refuses_a_missing_gpu_before_any_work(capsys, tmp_path, write_toy_corpus):
    data = {"tsv": write_toy_corpus(tmp_path / "toy.tsv")}
    code, _, err = run(capsys, *TRAINING["translate"](data, str(tmp_path / "run")), "--device", "cuda:1")
    assert code == 2 and "no CUDA GPU" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
