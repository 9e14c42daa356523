"""Every Python sample in the docs runs: extracted from the pages and executed as a program.

The rule the pages follow (docs/index.md, "About the samples"):

- A ```` ```python ```` block is a whole program. This test runs each one in a subprocess, in a
  fresh temporary folder with its own ``TRIMICRO_HOME``, and fails on a non-zero exit status
  or a timeout. A sample checks its own results with ``assert``.
- A block that includes a file with pymdownx.snippets (``examples/x.py`` between two ``--8<--``
  lines, or a section of it: ``examples/x.py:name``, between ``# --8<-- [start:name]`` and
  ``[end:name]`` comments in the file) shows that file as it is: the test checks that the path
  (and the section) exists, and runs the file unless tests run it already (a test module, or a
  file one names).
- A shell session (```` ```console ````: ``$ command`` lines, each followed by what it
  prints) is run when an HTML comment right before it names the node to run it against,
  ``<!-- docs-test: trimicro run examples/services.py --name demo-node -->`` (``{tmp}`` is a
  fresh folder): the test starts that node (its own ``TRIMICRO_HOME``, mDNS on 127.0.0.1),
  runs each command in a shell and compares what it prints with the page (ports and runs of
  spaces aside). Other sessions (installing, building, long-running commands) are reference
  output: the CLI tour's commands run against a real node in ``examples/cli_demo.py``
  (tests/test_examples.py), and each command's own tests cover the rest.

The programs run in parallel (a thread per program, each waiting on its subprocess), so the
whole module takes about as long as its slowest sample: about 20 s on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import attrs
import pytest

from trimicro.cluster.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
#: Per sample. The samples run all at once, so this bounds the whole module too; a loaded
#: 2-core machine has taken 30 s for the slowest (two cluster nodes in one process).
TIMEOUT = 90.0
pytestmark = pytest.mark.timeout(TIMEOUT + 30)
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S
)
SCISSORS = "--8<--"


@attrs.frozen
class Sample:
    """One ```python block: where it is, and either its code or the files it includes."""

    page: str
    line: int
    code: str
    includes: tuple[str, ...]
    sections: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def samples_in(page: Path, root: Path = ROOT) -> Iterator[Sample]:
    text = page.read_text(encoding="utf-8")
    name = page.relative_to(root).as_posix()
    for match in FENCE.finditer(text):
        if match["lang"] not in ("python", "py"):
            continue
        indent = len(match["indent"])
        body = "".join(line[indent:] + "\n" for line in match["body"].splitlines())
        line = text.count("\n", 0, match.start()) + 1
        included = snippets(body)
        includes = tuple(entry.split(":", 1)[0] for entry in included)
        sections = tuple(entry for entry in included if ":" in entry)
        yield Sample(name, line, "" if included else body, includes, sections)


def snippets(body: str) -> list[str]:
    """The files (``path`` or ``path:section``) a block includes, in pymdownx.snippets' block
    form: the paths on lines between two ``--8<--`` lines. (The pages use that form because
    the one-line form, ``--8<-- "path"``, is valid Python that ``ruff format`` rewrites.)"""
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    if not lines or lines[0] != SCISSORS:
        return []
    assert lines[-1] == SCISSORS, f"a snippet block that does not end with {SCISSORS}"
    return [line.strip("\"'") for line in lines[1:-1]]


SAMPLES = [sample for page in pages() for sample in samples_in(page)]

SESSION = re.compile(
    r"^<!-- docs-test: trimicro (?P<serve>[^\n]*?) -->\n\n?```console\n(?P<body>.*?)^```", re.M | re.S
)


@attrs.frozen
class Session:
    """A ```console block to run against a node: ``steps`` are (command, what it prints)."""

    page: str
    line: int
    serve: tuple[str, ...]
    steps: tuple[tuple[str, str], ...]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def sessions_in(page: Path, root: Path = ROOT) -> Iterator[Session]:
    text = page.read_text(encoding="utf-8")
    for match in SESSION.finditer(text):
        steps: list[tuple[str, list[str]]] = []
        for line in match["body"].splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line)
        line_no = text.count("\n", 0, match.start()) + 1
        shown = tuple((command, "\n".join(out)) for command, out in steps)
        yield Session(page.relative_to(root).as_posix(), line_no, tuple(shlex.split(match["serve"])), shown)


SESSIONS = [session for page in pages() for session in sessions_in(page)]


def normalized(output: str) -> list[str]:
    """What must match: ports vary between runs, and column widths with them."""
    output = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", output)
    return [" ".join(line.split()) for line in output.splitlines() if line.strip()]


def run_session(session: Session) -> list[str]:
    """Start the session's node, run its commands, return every difference (none: it matches)."""
    with tempfile.TemporaryDirectory(prefix="trimicro-docs-") as tmp:
        bin_dir = str(Path(sys.executable).parent)  # where the trimicro command is installed
        env = clean_env(tmp, PATH=bin_dir + os.pathsep + os.environ["PATH"])
        serve = [arg.replace("{tmp}", tmp) for arg in session.serve]
        node = subprocess.Popen(
            [str(Path(bin_dir) / "trimicro"), *serve],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert node.stdout is not None
            with ThreadPoolExecutor(1) as reader:  # its ready line, with a deadline
                ready = reader.submit(node.stdout.readline)
                if not wait([ready], timeout=TIMEOUT).done or not ready.result().startswith("node "):
                    return [f"the node did not start: {shlex.join(serve)}"]
            problems = []
            for command, shown in session.steps:
                result = run_bounded(command, cwd=ROOT, env=env, shell=True)
                printed = result.stdout + result.stderr
                if normalized(printed) != normalized(shown):
                    problems.append(f"$ {command}\nthe page shows:\n{shown}\nit printed:\n{printed}")
            return problems
        finally:
            node.send_signal(signal.SIGINT)  # it deregisters and stops
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()


def run_elsewhere(path: str) -> bool:
    """True for a test module, a file a test module names (it runs or imports that file), or a
    module of an example application's package that a test runs or imports (the package's
    modules run as its parts, not one by one: ``examples/orders/payment.py`` uses relative
    imports and means nothing alone)."""
    if path.startswith("tests/"):
        return True
    names = [path]
    package = (ROOT / path).parent
    if (package / "__init__.py").is_file():
        folder = package.relative_to(ROOT).as_posix()
        names += [f"{folder}/", f"from {package.name}.", f"import {package.name}"]
    tests = [test.read_text(encoding="utf-8") for test in (ROOT / "tests").glob("test_*.py")]
    return any(name in text for name in names for text in tests)


def run_program(code: str | None, script: Path | None = None) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="trimicro-docs-") as cwd:
        if script is None:
            script = Path(cwd) / "sample.py"
            script.write_text(code or "", encoding="utf-8")
        return run_bounded([sys.executable, str(script)], cwd=cwd, env=clean_env(cwd, PYTHONPATH=str(ROOT)))


def clean_env(tmp: str, **extra: str) -> dict[str, str]:
    """This environment with a fresh ``TRIMICRO_HOME`` (its own development authority, so its
    nodes see no other cluster) and none of the user's plugin choices."""
    env = dict(os.environ, TRIMICRO_HOME=str(Path(tmp) / "home"), **extra)
    for name in ("TRIMICRO_REGISTRY", "TRIMICRO_STORE", "TRIMICRO_BROKER", "TRIMICRO_CONFIG"):
        env.pop(name, None)
    return env


def run_bounded(
    command: str | list[str], *, cwd: str | Path, env: dict[str, str], shell: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run to the end or to ``TIMEOUT`` (then exit status -1 and "timed out" on stderr)."""
    try:
        return subprocess.run(
            command,
            shell=shell,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as err:
        return subprocess.CompletedProcess(err.cmd, -1, str(err.stdout or ""), f"(timed out: {err})")


def run_sample(sample: Sample) -> list[subprocess.CompletedProcess[str]]:
    if not sample.includes:
        return [run_program(sample.code)]
    return [run_program(None, ROOT / path) for path in sample.includes if not run_elsewhere(path)]


@attrs.frozen
class Results:
    samples: dict[str, list[subprocess.CompletedProcess[str]]]
    sessions: dict[str, list[str]]


@pytest.fixture(scope="module")
def results() -> Results:
    """Every sample and session run once, all at the same time (they are independent)."""
    with ThreadPoolExecutor(max_workers=min(32, len(SAMPLES) + len(SESSIONS))) as pool:
        sessions = pool.map(run_session, SESSIONS)
        samples = pool.map(run_sample, SAMPLES)
        return Results(
            dict(zip([s.id for s in SAMPLES], samples, strict=True)),
            dict(zip([s.id for s in SESSIONS], sessions, strict=True)),
        )


def test_the_docs_have_samples() -> None:
    """The extractor finds the pages' samples (an empty list would pass every other test)."""
    assert {"README.md", "docs/getting-started.md"} <= {s.page for s in SAMPLES}
    assert "docs/getting-started.md" in {s.page for s in SESSIONS}


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.id for s in SAMPLES])
def test_sample_runs(sample: Sample, results: Results) -> None:
    for path in sample.includes:
        assert (ROOT / path).is_file(), f"{sample.id} includes {path}, which does not exist"
    for included in sample.sections:  # a named section: the file marks where it starts
        path, section = included.rsplit(":", 1)
        marker = f"--8<-- [start:{section}]"
        assert marker in (ROOT / path).read_text(encoding="utf-8"), f"{sample.id}: no {marker} in {path}"
    for result in results.samples[sample.id]:
        assert result.returncode == 0, f"{sample.id} failed:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("session", SESSIONS, ids=[s.id for s in SESSIONS])
def test_session_prints_what_the_page_shows(session: Session, results: Results) -> None:
    problems = results.sessions[session.id]
    assert not problems, "\n\n".join(problems)


def test_extractor_reads_fences_and_snippets(tmp_path: Path) -> None:
    """Indented fences (inside a list) are dedented; a snippet block lists its files."""
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n1. step\n\n    ```python\n    x = 1\n    assert x == 1\n    ```\n\n"
        "```python\n--8<--\nexamples/services.py\ntests/test_x.py:suite\n--8<--\n```\n\n"
        "```console\n$ trimicro services\n```\n"
    )
    found = list(samples_in(page, tmp_path))
    assert [(s.line, s.code, s.includes, s.sections) for s in found] == [
        (5, "x = 1\nassert x == 1\n", (), ()),
        (10, "", ("examples/services.py", "tests/test_x.py"), ("tests/test_x.py:suite",)),
    ]


def test_the_cli_reference_covers_every_command() -> None:
    """docs/reference/cli.md has a section for each command the parser knows (a new command
    without a page fails here; the sections show each command's ``--help``)."""
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    commands = set(actions[0].choices)
    page = (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^### trimicro (\S+)$", page, re.M))
    assert commands - documented == set(), "commands without a section in docs/reference/cli.md"
    assert documented - commands == set(), "sections for commands that no longer exist"


def test_the_configuration_reference_names_every_variable() -> None:
    """Every ``TRIMICRO_*`` variable the package reads is in docs/reference/configuration.md."""
    sources = [p for layer in ("mailbox", "actors", "cluster") for p in (ROOT / layer).rglob("*.py")]
    read = {name for p in sources for name in re.findall(r"TRIMICRO_[A-Z_]+[A-Z]", p.read_text("utf-8"))}
    page = (ROOT / "docs" / "reference" / "configuration.md").read_text(encoding="utf-8")
    assert read, "no TRIMICRO_ variables found: the search is broken"
    assert {name for name in read if f"`{name}`" not in page} == set()


def test_extractor_reads_sessions(tmp_path: Path) -> None:
    """A marked console block becomes commands with their output; an unmarked one is skipped."""
    page = tmp_path / "page.md"
    page.write_text(
        "```console\n$ trimicro --help\n```\n\n"
        "<!-- docs-test: trimicro run app.py --store {tmp}/s -->\n```console\n"
        "$ trimicro services\nSERVICE  VERSION\ngreeter  latest\n$ printf 'x' | trimicro call a A.b\n```\n"
    )
    [session] = sessions_in(page, tmp_path)
    assert session.serve == ("run", "app.py", "--store", "{tmp}/s")
    assert session.steps == (
        ("trimicro services", "SERVICE  VERSION\ngreeter  latest"),
        ("printf 'x' | trimicro call a A.b", ""),
    )
    assert normalized("at 127.0.0.1:41327  up\n\n") == ["at 127.0.0.1:PORT up"]


def help_text(parser: argparse.ArgumentParser, command: list[str]) -> str:
    """What ``trimicro COMMAND --help`` prints, from the parser itself (no process needed)."""
    for name in command:
        [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = subparsers.choices[name]
    return parser.format_help()


def test_the_cli_reference_shows_the_current_help(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``$ trimicro ... --help`` block of docs/reference/cli.md is what the command prints
    today (argparse wraps at $COLUMNS: the page is written at 100)."""
    monkeypatch.setenv("COLUMNS", "100")
    page = CLI_PAGE.read_text(encoding="utf-8")
    blocks = HELP_BLOCK.findall(page)
    assert len(blocks) > 20
    parser = build_parser()
    stale = [args for args, shown in blocks if shown.rstrip() != help_text(parser, args.split()).rstrip()]
    assert not stale, f"--help changed for: {stale}; rewrite them with: python tests/test_docs.py"


CLI_PAGE = ROOT / "docs" / "reference" / "cli.md"
HELP_BLOCK = re.compile(r"^```console\n\$ trimicro ?(.*?) ?--help\n(.*?)^```", re.M | re.S)


def rewrite_cli_reference() -> None:
    """Put the current ``--help`` of each command into its block of docs/reference/cli.md."""
    os.environ["COLUMNS"] = "100"
    parser = build_parser()

    def current(match: re.Match[str]) -> str:
        args = match.group(1)
        shown = help_text(parser, args.split()).rstrip()
        return f"```console\n$ trimicro {args + ' ' if args else ''}--help\n{shown}\n```"

    CLI_PAGE.write_text(HELP_BLOCK.sub(current, CLI_PAGE.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    rewrite_cli_reference()
