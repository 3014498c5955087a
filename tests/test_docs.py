"""README.md, docs/ and BENCHMARKS.md say what the code does: every `make …`, `edge-sparse …`, `python -m …` and
`python bench.py …` command in README.md and docs/ parses with the real parser (the Makefile's expansion of it, for
make, through `make -n`), every `es.…(…)` call binds to the function's signature, every relative link (and anchor)
resolves, README stays short, and README's headline table and BENCHMARKS.md's summary are what the committed results
generate. Nothing is run but parsers and `make -n`."""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import io
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BENCHMARKS = ROOT / "BENCHMARKS.md"
GENERATED = {ROOT / "docs" / "bad-inputs.md"}  # rendered from tests/test_bad_inputs.py: its commands are bad on purpose
DOCS = sorted(p for p in (ROOT / "docs").glob("*.md") if p not in GENERATED)  # docs/study/ is generated too
COMMAND_PAGES = [README, *DOCS]
LINK_PAGES = [README, BENCHMARKS, *sorted((ROOT / "docs").rglob("*.md"))]
# entry points DESIGN.md names that are being built (their json rows read "not yet measured"): checked once they exist
PENDING_MAKE_TARGETS = {"zoo", "bench-train"}
NOT_OURS = {"pip", "pytest", "venv"}  # `python -m` modules that are not this project's


# --- finding commands and calls in markdown ------------------------------------------------------------------------------
def _fenced(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def _inline(text: str) -> list[str]:
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [re.sub(r"\s+", " ", s).strip() for s in re.findall(r"`([^`]+)`", prose)]


def _shell_lines(block: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split("#")[0].split()
        if words:
            out.append(shlex.join(words))
    return out


PROGRAMS = ("make ", "edge-sparse ", "python -m ", "python3 -m ", "python bench.py", "python3 bench.py", "torchrun ")


def commands(path: Path) -> list[str]:
    """Every command a page shows: lines of its sh code blocks and its inline code spans that start with a program."""
    text = path.read_text()
    found = [c for lang, b in _fenced(text) if lang in ("sh", "bash", "") for c in _shell_lines(b)]
    found += _inline(text)
    return sorted({c for c in found if c.startswith(PROGRAMS) or c in ("make", "edge-sparse")})


def es_calls(path: Path) -> list[tuple[str, int, list[str]]]:
    """(function, positional count, keyword names) of every `es.f(...)` in the page's python blocks and inline code."""
    text = path.read_text()
    trees = []
    for lang, block in _fenced(text):
        if lang == "python":
            trees.append(ast.parse(block, filename=f"{path.name} python block"))  # a block that does not parse fails here
    for span in _inline(text):
        if span.startswith("es."):
            trees.append(ast.parse(span, mode="eval"))
    calls = []
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    isinstance(node.func.value, ast.Name) and node.func.value.id == "es":
                calls.append((node.func.attr, len(node.args), [k.arg for k in node.keywords if k.arg]))
    return calls


# --- parsing them with the real parsers ------------------------------------------------------------------------------------
class _Parsed(Exception):
    pass


@contextlib.contextmanager
def _stop_after_parsing():
    """While active, ArgumentParser.parse_args parses for real and then stops the caller (nothing after it runs)."""
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        real(self, args, namespace)
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_then_stop
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = real


def _parse_or_fail(what: str, fn) -> None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            fn()
    except SystemExit as e:
        if e.code not in (0, None):
            pytest.fail(f"{what}: the parser refuses it: {err.getvalue().strip()}")


def _edge_sparse(argv: list[str], what: str) -> None:
    from edge_sparse.cli import build_parser

    if "--" in argv:  # main() hands what follows `--` to bench.py
        argv, rest = argv[: argv.index("--")], argv[argv.index("--") + 1:]
        if argv[:1] == ["bench"]:
            _bench_py(rest, what + " (bench.py flags)")
    p = build_parser()
    if not any(a.startswith("-") for a in argv):  # a name such as `edge-sparse build`: the (sub)command must exist
        sub = p
        for word in argv:
            acts = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
            assert acts and word in acts[0].choices, f"{what}: no subcommand {word!r}"
            sub = acts[0].choices[word]
        return
    _parse_or_fail(what, lambda: p.parse_args(argv))


def _module(module: str, argv: list[str], what: str) -> None:
    if module.split(".")[0] in NOT_OURS:
        return
    if module == "edge_sparse.remote" and "--" in argv:  # make bench: what follows `--` goes to bench.py
        _bench_py(argv[argv.index("--") + 1:], what + " (bench.py flags)")
    mod = importlib.import_module(module + ".__main__" if module == "benchmarks" else module)
    assert hasattr(mod, "main"), f"{what}: {module} has no main()"

    def run():
        with _stop_after_parsing():
            try:
                mod.main(argv)
            except _Parsed:
                return
        pytest.fail(f"{what}: {module}.main returned without parsing its arguments")

    _parse_or_fail(what, run)


def _bench_py(argv: list[str], what: str) -> None:
    from edge_sparse.harness import bench

    _parse_or_fail(what, lambda: bench.parse_args(argv))


def _after_program(words: list[str], what: str) -> None:
    """Parse what a shell command runs: edge-sparse, python -m MODULE, python bench.py, torchrun … -m MODULE."""
    prog = Path(words[0]).name
    if prog == "edge-sparse":
        return _edge_sparse(words[1:], what)
    if prog in ("python", "python3", "torchrun") or re.fullmatch(r"python3(\.\d+)?", prog):
        if "-m" in words:
            i = words.index("-m")
            return (_edge_sparse if words[i + 1] == "edge_sparse.cli" else
                    lambda a, w: _module(words[i + 1], a, w))(words[i + 2:], what)
        if len(words) > 1 and words[1].endswith("bench.py"):
            return _bench_py(words[2:], what)
    pytest.fail(f"{what}: do not know how to check {shlex.join(words)!r}")


def _make(words: list[str], what: str) -> None:
    assert shutil.which("make"), "make is not installed"
    r = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
    target = next((w for w in words[1:] if "=" not in w), None)  # None: `make` alone, i.e. its help
    if r.returncode != 0 and target in PENDING_MAKE_TARGETS and "No rule to make target" in r.stderr:
        pytest.skip(f"{what}: `make {target}` is not in the Makefile yet")
    assert r.returncode == 0, f"{what}: make -n fails: {r.stderr.strip()}"
    ran = 0
    for line in r.stdout.splitlines():  # the recipe lines that run a program of ours (not the shell of `data` etc.)
        if not re.match(r"\s*(\S*/)?(edge-sparse|python[\d.]*)\s", line):
            continue
        w = shlex.split(line)
        if Path(w[0]).name == "edge-sparse" or "-m" in w:
            if "-m" in w and w[w.index("-m") + 1] in NOT_OURS:
                continue
            _after_program(w, f"{what} -> {line.strip()}")
            ran += 1
    if target not in (None, "test", "test-fast", "clean", "setup", "data", "help"):
        assert ran, f"{what}: make -n ran nothing this test can parse:\n{r.stdout}"


def check_command(cmd: str, what: str) -> None:
    words = shlex.split(cmd)
    if words[0] == "make":
        return _make(words, what)
    return _after_program(words, what)


def _all_commands() -> list[tuple[str, str]]:
    return [(c, f"{p.relative_to(ROOT)}: `{c}`") for p in COMMAND_PAGES for c in commands(p)]


@pytest.mark.parametrize("cmd,what", _all_commands(), ids=lambda v: v if len(v) < 90 else v[:87] + "...")
def test_documented_command_parses(cmd, what):
    check_command(cmd, what)


def test_the_pages_show_commands():
    # the extraction itself works: the two commands, a make … ARGS=, a python -m and an edge-sparse are all found
    cs = {c for c, _ in _all_commands()}
    assert {"make build TARGET=rpi4", "make test"} <= cs
    assert any(c.startswith("make build") and "ARGS=" in c for c in cs)
    assert any(c.startswith("python -m benchmarks") for c in cs) and any(c.startswith("edge-sparse latency") for c in cs)
    check_command("python -m benchmarks --summary-only", "the command this test's messages name")


def test_a_bad_command_is_caught():
    with pytest.raises(pytest.fail.Exception, match="refuses"):
        check_command("edge-sparse build --target rpi4 --no-such-flag", "probe")
    with pytest.raises(pytest.fail.Exception, match="refuses"):
        check_command('make build TARGET=rpi4 ARGS="--search sideways"', "probe")
    with pytest.raises(pytest.fail.Exception, match="refuses"):
        check_command("python -m benchmarks.compare --budgetz rpi4", "probe")
    with pytest.raises(pytest.fail.Exception, match="refuses"):
        check_command("edge-sparse bench --target rpi4 -- --runz 5", "probe")
    with pytest.raises(AssertionError):
        check_command("edge-sparse frobnicate", "probe")


def test_every_help_ends_with_an_example_that_parses():
    from edge_sparse.cli import build_parser

    def walk(p, path):
        yield p, path
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    yield from walk(sub, path + [name])

    seen = 0
    for p, path in walk(build_parser(), []):
        help_text = p.format_help().rstrip()
        last = help_text.splitlines()[-1].strip()
        assert "example:" in help_text and last.startswith("edge-sparse"), \
            f"`edge-sparse {' '.join(path)} --help` does not end with an example:\n{help_text[-300:]}"
        check_command(shlex.join(shlex.split(last.split("    #")[0])), f"edge-sparse {' '.join(path)} --help example")
        seen += 1
    assert seen >= 15


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_es_calls_bind_to_the_api(page):
    import edge_sparse as es

    for name, npos, kws in es_calls(page):
        assert hasattr(es, name), f"{page.name}: es.{name} does not exist"
        try:
            inspect.signature(getattr(es, name)).bind(*[None] * npos, **{k: None for k in kws})
        except TypeError as e:
            pytest.fail(f"{page.name}: es.{name}({npos} positional, {', '.join(kws)}): {e}")


def test_api_snippets_are_found():
    calls = {name for p in COMMAND_PAGES for name, _, _ in es_calls(p)}
    assert {"prune", "build", "export", "predict_latency", "measure_latency"} <= calls


# --- links ---------------------------------------------------------------------------------------------------------------
def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    h = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return h.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    seen: dict[str, int] = {}
    out = set()
    for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        s = _slug(h)
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


@pytest.mark.parametrize("page", LINK_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", link):
            continue
        file, _, anchor = link.partition("#")
        target = (page.parent / file).resolve() if file else page
        assert target.exists(), f"{page.relative_to(ROOT)}: link {link!r}: {file} does not exist"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target), f"{page.relative_to(ROOT)}: link {link!r}: no such heading in {file or page.name}"


# --- README's size, and the numbers it and BENCHMARKS.md headline -------------------------------------------------------
def test_readme_is_short_and_opens_with_the_two_commands_and_the_headline_table():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines (at most 200: move depth into docs/)"
    assert len(text.split()) <= 1800, f"README.md has {len(text.split())} words (at most 1,800)"
    first = "\n".join(lines[:40])
    assert "make build TARGET=rpi4" in first and "make test" in first
    assert "<!-- headline:begin -->" in first and "<!-- headline:end -->" in first, \
        "the headline table must end within README's first 40 lines"


def _summary():
    return importlib.import_module("benchmarks.__main__")


def test_readme_headline_table_is_what_the_results_generate():
    m = _summary()
    text = README.read_text()
    got = re.search(r"<!-- headline:begin -->.*?<!-- headline:end -->\n?", text, flags=re.S).group(0)
    assert got == m.readme_section(m.headline()), \
        "README's headline table differs from benchmarks/*.json: run `python -m benchmarks --summary-only`"


def test_benchmarks_opens_with_the_summary_the_results_generate():
    m = _summary()
    text = BENCHMARKS.read_text()
    got = re.search(r"<!-- summary:begin -->.*?<!-- summary:end -->\n?", text, flags=re.S).group(0)
    assert got == m.summary_section(m.headline()), \
        "BENCHMARKS.md's summary differs from benchmarks/*.json: run `python -m benchmarks --summary-only`"
    end = text.splitlines().index("<!-- summary:end -->")
    assert end < 60, f"the summary ends on line {end + 1}: BENCHMARKS.md's first 60 lines must carry it"


def test_headline_rows_come_from_their_files(tmp_path):
    # a missing result reads "not yet measured" and fills in once its json is there
    m = _summary()
    rows = {r["claim"]: r for r in m.headline(tmp_path)}
    assert all("not yet measured" in r["value"] for r in rows.values())
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "zoo.json").write_text('[{"model": "a"}, {"model": "b"}]')
    zoo = next(r for r in m.headline(tmp_path) if r["command"] == "make zoo")
    assert "2 results" in zoo["value"]
    real = m.headline()
    assert sum("not yet measured" not in r["value"] for r in real) >= 8  # the committed results are read


def test_assemble_keeps_every_section_in_place():
    m = _summary()
    old = "# B\n\n<!-- intro:begin -->\nI\n<!-- intro:end -->\n\nloose text\n\n<!-- a:begin -->\nA\n<!-- a:end -->\n"
    new = m.assemble(old, {"summary": "<!-- summary:begin -->\nS\n<!-- summary:end -->\n",
                           "a": "<!-- a:begin -->\nA2\n<!-- a:end -->\n", "z": "<!-- z:begin -->\nZ\n<!-- z:end -->\n"},
                     root=Path("/nonexistent"))
    assert [t for t, _ in m.sections(new)] == [None, "intro", "summary", None, "a", "z"]
    assert "loose text" in new and "A2" in new and "\nA\n" not in new


def test_headline_recipe_rows_ran_todays_default_flags():
    # the headline's accuracy and build time come from recipes.json rows named in DEFAULT_RECIPES: their flags must
    # still be what a plain `make build TARGET=rpi4` does
    import dataclasses

    from benchmarks.recipes import RECIPES
    from edge_sparse.cli import _build_args, _config

    def cfg(flags, over=None):
        p = argparse.ArgumentParser()
        _build_args(p)
        c = _config(p.parse_args(["--target", "rpi4", *flags]))
        over = over or {}
        return dataclasses.replace(c, train=c.train.replace(**over.get("train", {})),
                                   finetune=c.finetune.replace(**over.get("finetune", {})))

    default = cfg([])
    for name in _summary().DEFAULT_RECIPES:
        spec = RECIPES[name]
        assert cfg(spec[1], spec[2] if len(spec) > 2 else None) == default, f"recipe {name} is no longer the default"
