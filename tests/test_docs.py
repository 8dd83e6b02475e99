"""README.md and docs/ name only what exists: every relative link leads to a file (and a heading) that is
there, and every command named in them (``python <script>.py``, ``python -m <module>``, an installed
``derd-*`` command, ``make <target>``) exists and takes every flag it is given (the flag is in its --help).

Each command's help is read once, in this process (``runpy``, with ``sys.argv`` set), which costs no
interpreter start per command."""

from __future__ import annotations

import configparser
import contextlib
import functools
import io
import re
import runpy
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
INLINE = re.compile(r"`([^`]+)`")
COMMAND = re.compile(
    r"(?:^|(?<=[\s(:]))(?:\.venv/bin/)?(?P<cmd>python3? -m [\w.]+|python3? [\w/.-]+\.py|derd-[a-z]+|(?<![^\n])make [a-z]+)"
    r"(?P<rest>[^\n]*)"
)
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.cache
def _anchors(path: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", _prose(path.read_text()), re.M)}


def _links(path: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(path.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(doc: Path):
    broken = []
    for target in _links(doc):
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{doc.relative_to(REPO)}:\n" + "\n".join(broken)


def test_every_page_in_docs_is_linked_from_the_readme_and_opens_with_a_summary():
    readme = (REPO / "README.md").read_text()
    for page in DOCS[1:]:
        assert f"(docs/{page.name})" in readme, f"README.md has no link to docs/{page.name}"
        paragraphs = page.read_text().split("\n\n")
        assert paragraphs[0].startswith("# ") and len(paragraphs[1].split()) >= 30, f"{page.name}: no summary"


def test_the_readme_starts_with_its_two_commands_and_stays_short():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    assert lines[2] == "```bash" and lines[3].startswith("make demo") and lines[4].startswith("make test")


def _command_lines(text: str) -> list[str]:
    """Every piece of text that may name a command: each line of a fenced block (continued lines joined, a
    prompt's ``$ `` dropped) and each inline code span."""
    lines = []
    for block in FENCE.findall(text):
        lines += [line.removeprefix("$ ") for line in block.replace("\\\n", " ").splitlines()]
    for paragraph in _prose(text).split(
        "\n\n"
    ):  # a stray backtick pairs the rest of its paragraph wrongly, no more
        lines += [span.replace("\n", " ") for span in INLINE.findall(paragraph)]
    return lines


def _uses(text: str) -> list[tuple[str, list[str]]]:
    """(command, the flags given to it) for every command named in ``text``."""
    uses = []
    for line in _command_lines(text):
        for m in COMMAND.finditer(line):
            rest = re.split(r"\s#\s|&&|\|\||;|\s\|\s", m["rest"])[0]
            uses.append((re.sub(r"^python3 ", "python ", m["cmd"]), FLAG.findall(rest)))
    return uses


def _entry_points() -> dict[str, str]:
    """Installed command -> the module it runs (setup.cfg's console_scripts)."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return {
        name.strip(): target.split(":")[0].strip() for name, target in (line.split("=") for line in lines)
    }


def _run_help(run, argv0: str) -> str:
    out, argv = io.StringIO(), sys.argv
    sys.argv = [argv0, "--help"]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit), warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", RuntimeWarning
            )  # runpy: the module was imported before, as a module
            run()
    finally:
        sys.argv = argv
    return out.getvalue()


@functools.cache
def _help(command: str) -> str:
    """The --help text of a command the docs name; an unknown command fails the test here."""
    if command.startswith("make "):
        target = command.split()[1]
        assert re.search(rf"^{target}:", (REPO / "Makefile").read_text(), re.M), f"no make target {target}"
        return ""
    if command.startswith("derd-"):
        assert command in _entry_points(), f"{command} is not an installed command (setup.cfg)"
        module = _entry_points()[command]
        return _run_help(lambda: runpy.run_module(module, run_name="__main__", alter_sys=True), command)
    target = command.split()[-1]
    if command.startswith("python -m "):
        assert (REPO / Path(*target.split("."))).with_suffix(".py").is_file(), f"no module {target}"
        return _run_help(lambda: runpy.run_module(target, run_name="__main__", alter_sys=True), target)
    assert (REPO / target).is_file(), f"no file {target}"
    return _run_help(lambda: runpy.run_path(str(REPO / target), run_name="__main__"), target)


def test_every_command_named_exists_and_takes_every_flag_it_is_given():
    unknown = []
    for doc in DOCS:
        for command, flags in _uses(doc.read_text()):
            text = _help(command)
            unknown += [f"{doc.relative_to(REPO)}: {command} {flag}" for flag in flags if flag not in text]
    assert not unknown, "flags no --help lists:\n" + "\n".join(unknown)


def test_the_checker_finds_commands_and_flags():
    """The parser itself: commands in blocks (continued lines, prompts, comments) and in inline code."""
    text = (
        "```bash\n$ python tuning/search.py --dataset digits \\\n    --min-clean 0.7x   # --not-a-flag\n```\n"
        "and `python -m derd.train --config X` or `derd-export --select knee` then `make demo`.\n"
    )
    assert _uses(text) == [
        ("python tuning/search.py", ["--dataset", "--min-clean"]),
        ("python -m derd.train", ["--config"]),
        ("derd-export", ["--select"]),
        ("make demo", []),
    ]
