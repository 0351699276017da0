"""Running the project's scripts as a user would: in a subprocess, or in this process (fast)."""
import contextlib
import functools
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

from sisa.cli import run_main
from sisa.layout import PROJECT_ROOT


def run_script(script: str, *args, check: bool = True, timeout: int = 600,
               no_progress: bool = True) -> subprocess.CompletedProcess:
    """Run a script as a user would (with --no_progress, for the scripts that show progress bars)."""
    flags = ["--no_progress"] if no_progress else []
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / script), *map(str, args), *flags],
                          capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The last stderr line; asserts the script failed with exactly one error line."""
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("warning:")]
    assert proc.returncode != 0, proc.stdout
    assert len(lines) == 1, proc.stderr
    return lines[0]


@functools.lru_cache(maxsize=None)
def _script(script: str):
    spec = importlib.util.spec_from_file_location(f"script_{Path(script).stem}", PROJECT_ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call_script(script: str, *args) -> subprocess.CompletedProcess:
    """A script's main() in this process, with its exit status and output as run_script gives them:
    for flag and input checks, without starting Python and importing torch for each case."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_main(_script(script).main, Path(script).name, [*map(str, args), "--no_progress"], exit=False)
    return subprocess.CompletedProcess([script, *map(str, args)], code, out.getvalue(), err.getvalue())
