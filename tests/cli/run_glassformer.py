"""The `glassformer` command as a user runs it (imported by the CLI tests beside it).

By default the command runs in this process — ``glassformer.cli.main.main(args)`` with stdin, stdout and stderr
swapped for strings and its exit status kept, as a subprocess would give them — so that each test pays neither
the interpreter's start nor torch's import again, and models or files read once (a GGUF's metadata) are reused.
``subprocess=True`` runs ``python -m glassformer`` for real, for what only a new process shows (the entry point,
``--help``, ``--version``).
"""

import contextlib
import io
import subprocess as subprocess_module
import sys
import traceback

from glassformer.cli.main import main


class _Stdin(io.StringIO):
    def isatty(self) -> bool:
        return False


def cli(
    *args: str, check: bool = True, stdin: str | None = None, timeout: int = 300, subprocess: bool = False
) -> subprocess_module.CompletedProcess:
    """Run ``glassformer *args``; with ``check``, fail the test (showing stderr) unless it exits 0."""
    if subprocess:
        result = subprocess_module.run(
            [sys.executable, "-m", "glassformer", *args], capture_output=True, text=True, timeout=timeout, input=stdin
        )
    else:
        out, err = io.StringIO(), io.StringIO()
        saved_stdin = sys.stdin
        sys.stdin = _Stdin(stdin or "")
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(list(args))
                except SystemExit as exit:  # argparse's errors, --help and --version
                    code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
                except Exception:  # what a subprocess would show as a traceback, exit status 1
                    traceback.print_exc()
                    code = 1
        finally:
            sys.stdin = saved_stdin
        result = subprocess_module.CompletedProcess(["glassformer", *args], code, out.getvalue(), err.getvalue())
    if check:
        assert result.returncode == 0, result.stderr
    return result
