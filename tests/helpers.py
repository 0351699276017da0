"""Running the project's scripts as a user would, in a subprocess."""
import subprocess
import sys

from sisa.layout import PROJECT_ROOT


def run_script(script: str, *args, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / script), *map(str, args), "--no_progress"],
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
