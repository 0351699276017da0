"""What a user reads: the README stays a front page, every link in it and in docs/ leads somewhere, and
every command it shows passes only flags its script knows. (The excerpts of real reports and
benchmarks are checked in test_study.py and test_benchmarks.py.) No models, no data: fast."""
import functools
import importlib.util
import re
import unicodedata
from pathlib import Path

import pytest

from sisa.layout import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
DOCS = sorted((PROJECT_ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_LIMIT = 15_000          # bytes: a front page; everything else lives in docs/
SCRIPTS = ("study.py", "train.py", "evaluate.py", "unlearn.py")   # the scripts with get_args_parser()

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
COMMAND = re.compile(r"(?:\.venv/bin/python|\.venv/bin/torchrun[^`\n]*?)\s+([\w/.-]+\.py)\b([^`\n]*)")


def rel(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    kept = "".join(c for c in text if c.isalnum() or c in "-_ " or unicodedata.category(c).startswith("M"))
    return kept.replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset:
    seen, out = {}, set()
    for line in prose_lines_keep_code(path.read_text()):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def prose_lines_keep_code(text: str) -> list[str]:
    """The lines outside fenced code blocks, inline code kept (headings are slugged with it)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def links(path: Path) -> list[str]:
    return [m.group(1) for line in prose_lines_keep_code(path.read_text())
            for m in LINK.finditer(re.sub(r"`[^`]*`(?!\])", "``", line))]


def test_the_readme_is_a_front_page():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size:,} bytes (at most {README_LIMIT:,}): move detail to docs/"


def test_docs_pages_exist():
    assert (PROJECT_ROOT / "docs" / "performance.md") in DOCS and len(DOCS) >= 2


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_resolves(page):
    """Every relative link (and #anchor into a markdown page) points at something that exists."""
    broken = []
    found = links(page)
    for target in found:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):     # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {rel(dest)}")
    assert not broken, f"{rel(page)}: " + "; ".join(broken)
    if page == README:
        assert found, "the README links nowhere"


@functools.lru_cache(maxsize=None)
def known_flags(script: str) -> frozenset:
    spec = importlib.util.spec_from_file_location(f"docs_check_{Path(script).stem}", PROJECT_ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return frozenset(module.get_args_parser()._option_string_actions)


def commands(text: str) -> list[tuple[str, list[str]]]:
    """(script, flags) of every `.venv/bin/python X.py ...` or `.venv/bin/torchrun ... X.py ...`
    (continuation lines joined, comments dropped)."""
    out = []
    for m in COMMAND.finditer(text.replace("\\\n", " ")):
        args = m.group(2).split(" #", 1)[0]
        out.append((m.group(1), [t.split("=", 1)[0] for t in args.split() if t.startswith("--")]))
    return out


def test_commands_use_flags_their_scripts_know():
    """README and docs commands of study/train/evaluate/unlearn pass only flags the script's parser has."""
    unknown, checked = [], set()
    for page in PAGES:
        for script, flags in commands(page.read_text()):
            if script not in SCRIPTS:
                assert page != README, f"README runs {script}, which has no get_args_parser() to check it by"
                continue
            bad = [f for f in flags if f not in known_flags(script)]
            unknown += [f"{rel(page)}: {script} {f}" for f in bad]
            if page == README:
                checked.add(script)
    assert not unknown, "flags no parser knows: " + "; ".join(unknown)
    assert checked == set(SCRIPTS), f"the README shows commands of {sorted(checked)} only"


def test_commands_use_the_projects_python():
    """Commands are written as they run after ./setup.sh: with .venv/bin/python, never python3."""
    for page in PAGES:
        assert not re.search(r"(^|[\s`(])python3? +\S+\.py", page.read_text(), re.M), rel(page)


def test_the_checks_catch_what_they_should():
    assert slug("Precision: `--precision auto|fp32|bf16`") == "precision---precision-autofp32bf16"
    assert slug("The study: `study.py`") == "the-study-studypy"
    assert commands(".venv/bin/python study.py --preset cpu \\\n    --limit=20  # --not_a_flag\n") == \
        [("study.py", ["--preset", "--limit"])]
    assert "--no_such_flag" not in known_flags("study.py") and "--limit" in known_flags("study.py")
    assert commands(".venv/bin/torchrun --standalone --nproc_per_node 4 train.py --seed 1") == [("train.py", ["--seed"])]
