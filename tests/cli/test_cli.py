import pytest
from run_glassformer import cli

import glassformer
from glassformer.cli.main import main


def run_cli(*args: str, subprocess: bool = False):
    return cli(*args, check=False, timeout=120, subprocess=subprocess)


def test_help_lists_commands():
    result = run_cli("--help", subprocess=True)  # the entry point, in a new process
    assert result.returncode == 0 and "tour" in result.stdout and "env" in result.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:  # argparse's version action (the entry point: test_help_lists_commands)
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.strip() == f"glassformer {glassformer.__version__}"


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: glassformer" in capsys.readouterr().out


def test_unknown_command_fails():
    result = run_cli("fly")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_tour_prints_correct_numbers_and_flags_the_guides_errors():
    result = run_cli("tour")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "E[2] ('transformer') = [0.7, 0.8, 0.9]" in out
    assert "dims 0..5: [0.90930, -0.41615, 0.95231, -0.30515, 0.98045, -0.19678]" in out
    assert "softmax([2, 4, 5]) = [0.0351, 0.2595, 0.7054]" in out
    assert "weights = [[0.5000, 0.5000], [0.7604, 0.2396]]" in out
    assert "output  = [[0.3500, 0.5500], [0.4281, 0.6802]]" in out
    assert "output (1, 3, 300), weights (1, 4, 3, 3)" in out
    assert "= [0.3800, -0.0970, 0.2040, 0.1280]" in out
    assert "LayerNorm([2.0, -1.0, 3.0, 0.0]) = [0.6325, -1.2649, 1.2649, -0.6325]" in out
    assert "src (64, 30) -> (64, 30, 300)" in out
    assert "-> logits (64, 20, 10000)" in out
    assert "    [1, 1, 1, 1, 0]" in out
    assert out.count("guide printed:") == 3
