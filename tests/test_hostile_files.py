"""A corpus of hostile and damaged files, built here: each is refused with one line naming the file, quickly and
without allocating what it asks for, and nothing in it is executed."""

import json
import pickle
import struct
import subprocess
import sys

import torch

from glassformer import GPT, GPTConfig
from glassformer.models.bert import Bert, BertConfig

CLI_SCRIPT = """
import contextlib, io, json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # a model built from what a file claims would not fit
from glassformer.cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    results.append({"code": code, "stderr": err.getvalue(), "seconds": time.perf_counter() - start})
print(json.dumps(results))
"""


def run_commands(commands: list[list[str]]) -> list[dict]:
    """Run each command line through ``glassformer``'s ``main`` in one fresh process under a memory limit."""
    result = subprocess.run(
        [sys.executable, "-c", CLI_SCRIPT, json.dumps(commands)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def gpt2_directory(path):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=64, max_seq_length=16, d_model=16, num_layers=2, num_heads=2, d_ff=32)
    GPT(config).save_pretrained(path, format="hf")
    return path


class Payload:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PAYLOAD_MARKER'], 'w').write('ran')",))


def edit_config(directory, **fields):
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **fields}))


def hostile(kind, tmp_path):
    """Build one hostile model directory (or file) of ``kind``; return ``(path, what the refusal must say)``."""
    d = gpt2_directory(tmp_path / kind)
    weights = d / "model.safetensors"
    if kind == "pickle-payload":
        bert = tmp_path / "bert"
        torch.manual_seed(0)
        Bert(
            BertConfig(vocab_size=32, max_seq_length=16, d_model=16, num_layers=1, num_heads=2, d_ff=32)
        ).save_pretrained(bert, format="hf")
        (bert / "model.safetensors").unlink()
        (bert / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": Payload()}))
        return bert, "refused by weights_only loading"
    if kind == "pickle-only":
        weights.unlink()
        (d / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
        return d, "weights_only"
    if kind in ("shard-traversal", "shard-absolute"):
        outside = tmp_path / "outside.safetensors"
        weights.rename(outside)
        target = "../outside.safetensors" if kind == "shard-traversal" else str(outside)
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": target}}))
        return d, "outside the model directory"
    if kind == "huge-layers":
        edit_config(d, n_layer=1_000_000)
        return d, "asks for 1000000 layers but holds"
    if kind == "huge-width":
        edit_config(d, n_embd=1_000_000, n_head=1)
        return d, "the config does not belong to these weights"
    if kind == "huge-context":
        edit_config(d, n_positions=10**12)
        return d, "max_seq_length must be an integer in [1, 1,048,576]"
    if kind == "huge-header":
        data = weights.read_bytes()
        weights.write_bytes(struct.pack("<Q", 1 << 60) + data[8:])
        return d, "model.safetensors is not a valid safetensors file"
    if kind == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return d, "model.safetensors is not a valid safetensors file"
    if kind == "bit-flipped-header":
        data = bytearray(weights.read_bytes())
        data[20] ^= 0xFF
        weights.write_bytes(bytes(data))
        return d, "model.safetensors is not a valid safetensors file"
    if kind == "non-utf8-config":
        (d / "config.json").write_bytes(b'{"model_type": "gpt2", "n_layer": \xff\xfe}')
        return d, "config.json is not UTF-8 text"
    if kind == "config-not-an-object":
        (d / "config.json").write_text("[1, 2, 3]")
        return d, "config.json holds a JSON list, not an object"
    if kind == "config-wrong-types":
        edit_config(d, n_layer="two")
        return d, "asks for 'two' layers"
    if kind == "negative-eps":
        edit_config(d, layer_norm_epsilon=-1)
        return d, "layer_norm_eps must be a number > 0"
    if kind == "bad-gguf":
        path = tmp_path / "bad.gguf"
        path.write_bytes(b"GGUF" + struct.pack("<I", 3) + struct.pack("<QQ", 10**15, 10**15) + b"\0" * 64)
        return path, "is not a readable GGUF file"
    raise AssertionError(kind)


KINDS = [
    "pickle-payload", "pickle-only", "shard-traversal", "shard-absolute", "huge-layers", "huge-width", "huge-context",
    "huge-header", "truncated-weights", "bit-flipped-header", "non-utf8-config", "config-not-an-object",
    "config-wrong-types", "negative-eps", "bad-gguf",
]  # fmt: skip


def test_every_hostile_file_is_refused_in_one_line(tmp_path, monkeypatch):
    marker = tmp_path / "payload-ran"
    monkeypatch.setenv("PAYLOAD_MARKER", str(marker))
    cases = {kind: hostile(kind, tmp_path) for kind in KINDS}
    commands = [
        ["classify", "--model", str(path), "good film"]
        if kind == "pickle-payload"
        else ["generate", "--model", str(path), "--prompt", "a", "--max-new-tokens", "2"]
        for kind, (path, _) in cases.items()
    ]
    for (kind, (_, message)), result in zip(cases.items(), run_commands(commands), strict=True):
        lines = [line for line in result["stderr"].splitlines() if not line.startswith("glassformer: device")]
        assert result["code"] == 2, (kind, result)
        assert len(lines) == 1 and lines[0].startswith("glassformer: error:") and message in lines[0], (kind, result)
        assert result["seconds"] < 20, (kind, result)
    assert not marker.exists()  # no pickle's code ever ran


def test_a_shard_inside_the_directory_still_loads(tmp_path):
    d = gpt2_directory(tmp_path / "sharded")
    (d / "model.safetensors").rename(d / "part-1.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": "part-1.safetensors"}}))
    model = GPT.from_pretrained(d)
    assert model.config.num_layers == 2
