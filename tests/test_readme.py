"""The README's commands stay true.

CI runs exactly the install and test lines the README's Quick start shows (with the venv's
``.venv/bin/`` spelled out, since CI activates nothing), the first command is the MNIST-1D
table, and every command in a fenced block of the README (and of reports/README.md,
studies/README.md, docs/DESIGN.md) is parsed by its own tool's parser, without running it: the
suite's argparse parsers (``benchmark.cli.build_parsers``; ``train``/``tune`` options also
validated as run options), Snakemake's (targets and ``--config`` keys too), MLflow's click
commands, torchrun's, optuna-dashboard's and pip's options from their ``--help``. Python blocks
compile and the names they import from ``benchmark`` exist; a family example in YAML
validates as a family.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import re
import shlex
import subprocess
import sys
import tomllib
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCS = ("README.md", "reports/README.md", "studies/README.md", "docs/DESIGN.md")
# what a fenced command may call besides the tools checked below: shell built-ins, and the
# driver's own tool; anything else fails the test until a checker knows it
PLAIN = {"cd", "export", "nvidia-smi"}
# the one way of calling the tools: the venv is activated once (Quick start)
ACTIVATE = ". .venv/bin/activate"


class Bad(Exception):
    """A fenced command its tool would refuse."""


# ---------------------------------------------------------------- reading the fenced blocks


def blocks_of(text: str, lang: str) -> list[tuple[int, str]]:
    """``(first line number, text)`` of every ```lang block of a Markdown text, a block indented
    in a list item included (its indent removed)."""
    blocks = []
    pattern = rf"^(?P<indent> *)```{lang}\n(?P<body>.*?)^(?P=indent)```"
    for match in re.finditer(pattern, text, flags=re.S | re.M):
        indent = len(match["indent"])
        body = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
        blocks.append((text.count("\n", 0, match.start("body")) + 1, body))
    return blocks


def fenced(doc: str, lang: str) -> list[tuple[int, str]]:
    return blocks_of((ROOT / doc).read_text(), lang)


def command_lines(doc: str) -> list[tuple[int, str]]:
    """Every command line of the document's bash blocks (continuations joined, comments and
    blank lines dropped), with its line number."""
    lines = []
    for start, block in fenced(doc, "bash"):
        joined, first = "", None
        for offset, raw in enumerate(block.splitlines()):
            first = start + offset if first is None else first
            if raw.endswith("\\"):
                joined += raw[:-1] + " "
                continue
            joined += raw
            if shlex.split(joined, comments=True):
                lines.append((first, joined.strip()))
            joined, first = "", None
    return lines


def simple_commands(line: str) -> list[list[str]]:
    """A shell line -> its simple commands (split at ``&&``, ``||``, ``;``, ``|``), each without
    leading ``NAME=value`` assignments (checked here) and without comments."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in {"&&", "||", ";", "|"}:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    out = []
    for words in commands:
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            check_env(words.pop(0).partition("=")[0])
        if words:
            out.append(words)
    return out


def check_env(name: str) -> None:
    """An environment variable a command sets is one its reader knows."""
    if name.startswith("MLFLOW_"):
        import mlflow.environment_variables as known

        if not hasattr(known, name):
            raise Bad(f"{name}: not an MLflow environment variable")
    elif name.startswith("BENCHMARK_") and name not in _package_text():
        raise Bad(f"{name}: no module of benchmark/ reads it")


@cache
def _package_text() -> str:
    return "".join(p.read_text() for p in (ROOT / "benchmark").rglob("*.py"))


# ---------------------------------------------------------------- one checker per tool


def _argparse(parse, args: list[str]):
    """Run an argparse parse, turning its exit into :class:`Bad` with what it printed."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse(args)
    except SystemExit:
        raise Bad(err.getvalue().strip().splitlines()[-1] if err.getvalue() else "refused"
                  ) from None


def _path(word: str) -> Path:
    path = ROOT / word
    if not path.exists():
        raise Bad(f"{word}: no such file in the repository")
    return path


def check_benchmark(args: list[str]) -> str:
    """``python -m benchmark <sub> ...``: the subcommand and its options exist; a run's or a
    study's ``key=value`` options validate as run options; families and files exist."""
    from benchmark.cli import build_parsers, main
    from benchmark.errors import UserError

    _, commands = build_parsers()
    if not args or args[0] not in commands:
        raise Bad(f"no subcommand {args[:1]}; the suite has {sorted(commands)}")
    sub = args[0]
    ns = _argparse(commands[sub].parse_intermixed_args, args[1:])
    try:
        if sub == "train" and not ns.tuned:
            from benchmark.config import load_config

            load_config(_path(ns.config) if ns.config else None, ns.overrides)
        elif sub == "tune":
            from benchmark.tuning.spec import load_tuning

            load_tuning(_path(ns.config) if ns.config else None, ns.overrides)
        elif sub in ("topology", "plan"):  # cheap, and read no data: run them
            extra = ["--config-dir", str(ROOT / "config"), "--calibration",
                     str(ROOT / "no-calibration.json")] if sub == "plan" else []
            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                code = main([*args, *extra])
            if code != 0:
                raise Bad(err.getvalue().strip())
        elif sub == "calibrate":
            for family in ns.family:
                _path(f"config/{family}.yaml")
    except UserError as err:
        raise Bad(str(err)) from None
    return "benchmark"


def check_python(args: list[str]) -> str:
    if args[:2] == ["-m", "benchmark"]:
        return check_benchmark(args[2:])
    if args[:2] == ["-m", "pytest"]:
        return "pytest"
    if args[:2] == ["-m", "pip"]:
        return check_pip(args[2:])
    if args[:1] == ["-c"]:
        compile(args[1], "python -c", "exec")
        return "python -c"
    if args and args[0].startswith("benchmarks/") and args[0].endswith(".py"):
        _path(args[0])
        return "benchmarks"
    raise Bad(f"python {' '.join(args[:2])}: not a command this test knows")


TARGETS = re.compile(r"reports/(?:(?:table|tuning|overhead)_(?P<family>[\w.-]+)\.(?:csv|md|html)"
                     r"|report\.html)|data/\.ready/(?P<item>[\w.-]+)")


def check_snakemake(args: list[str]) -> str:
    """Snakemake's own parser; each target one the workflow makes, of a family that exists;
    ``--config`` keys and values the workflow's (``benchmark.grid.workflow_options``)."""
    from snakemake.cli import get_argument_parser, parse_config

    from benchmark.errors import UserError
    from benchmark.grid import workflow_options

    ns = _argparse(get_argument_parser().parse_args, args)
    try:
        workflow_options(parse_config(ns.config) if ns.config else {})
    except (UserError, ValueError) as err:
        raise Bad(f"--config {ns.config}: {err}") from None
    for profile in [ns.profile] if isinstance(ns.profile, str) else ns.profile or []:
        _path(profile)
    for target in ns.targets:
        match = TARGETS.fullmatch(target)
        if match is None:
            raise Bad(f"target {target}: not an output of the workflow")
        if match["family"]:
            _path(f"config/{match['family']}.yaml")
    return "snakemake"


def check_mlflow(args: list[str]) -> str:
    """MLflow's click command: the subcommand and its options, parsed without running."""
    import click
    from mlflow.cli import cli

    command = cli.get_command(click.Context(cli), args[0]) if args else None
    if command is None:
        raise Bad(f"mlflow {args[:1]}: no such command")
    try:
        command.make_context(f"mlflow {args[0]}", args[1:])
    except click.ClickException as err:
        raise Bad(err.format_message()) from None
    return "mlflow"


@cache
def _help_options(*command: str) -> frozenset[str]:
    """The option names a program's ``--help`` lists."""
    text = subprocess.run(list(command) + ["--help"], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    return frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


def _options_listed(args: list[str], known: frozenset[str], tool: str) -> list[str]:
    """Every ``-x`` / ``--xx`` word is one of ``known``; the other words are returned."""
    rest = []
    for word in args:
        if word.startswith("-"):
            if word.partition("=")[0] not in known:
                raise Bad(f"{tool}: no option {word}")
        else:
            rest.append(word)
    return rest


DASHBOARD = BIN / "optuna-dashboard"  # the optional `dashboard` extra (CI does not install it)


def check_optuna_dashboard(args: list[str]) -> str:
    if not DASHBOARD.exists():
        return "optuna-dashboard not installed"
    words = _options_listed(args, _help_options(str(DASHBOARD)), "optuna-dashboard")
    journals = [w for w in words if w.endswith(".journal")]
    if len(journals) != 1:
        raise Bad("optuna-dashboard: expected one study journal (the storage argument)")
    return "optuna-dashboard"


def check_pip(args: list[str]) -> str:
    """``pip install``: options pip lists, requirements that parse, extras the project has."""
    from packaging.requirements import InvalidRequirement, Requirement

    if args[:1] != ["install"]:
        raise Bad(f"pip {args[:1]}: only `pip install` is expected")
    known = _help_options(sys.executable, "-m", "pip", "install")
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                 ["optional-dependencies"])
    words = _options_listed(args[1:], known, "pip install")
    for word in words:
        local = re.fullmatch(r"\.(?:\[(?P<extras>[\w,-]+)\])?", word)
        if local:
            unknown = set((local["extras"] or "").split(",")) - extras - {""}
            if unknown:
                raise Bad(f"pip install {word}: no extra {sorted(unknown)} in pyproject.toml "
                          f"(it has {sorted(extras)})")
        elif not word.startswith("http"):
            try:
                Requirement(word)
            except InvalidRequirement as err:
                raise Bad(f"pip install {word}: {err}") from None
    return "pip"


def check_torchrun(args: list[str]) -> str:
    from torch.distributed.run import get_args_parser

    ns = _argparse(get_args_parser().parse_args, args)
    if not (ns.module and ns.training_script == "benchmark"):
        raise Bad("torchrun: expected `-m benchmark ...`")
    check_benchmark(ns.training_script_args)
    return "torchrun"


def check_bash(args: list[str]) -> str:
    _path(args[0])
    return "bash"


TOOLS = {"python": check_python, "snakemake": check_snakemake, "mlflow": check_mlflow,
         "optuna-dashboard": check_optuna_dashboard, "pip": check_pip,
         "torchrun": check_torchrun, "bash": check_bash}


def check_line(line: str) -> list[str]:
    """Check one fenced command line; the tools it calls."""
    if line == ACTIVATE:
        return ["activate"]
    if ".venv/bin/" in line:
        raise Bad("calls a tool by its .venv/bin/ path: the Quick start activates the venv "
                  "once, every block then calls python, snakemake, mlflow... by name")
    if re.search(r"(?<![\w\"'])[<\[][\w .:|-]*[>\]]", line.replace(".[", "")):
        raise Bad("holds a placeholder (<...> or [...]): fenced commands run as they are")
    tools = []
    for words in simple_commands(line):
        program, args = words[0], words[1:]
        if program == "python3" and args[:2] == ["-m", "venv"]:
            tools.append("venv")
        elif program in TOOLS:
            tools.append(TOOLS[program](args))
        elif program in PLAIN:
            tools.append(program)
        else:
            raise Bad(f"{program}: not a command this test knows (add a checker for it)")
    return tools


# ---------------------------------------------------------------- the tests


def _quick_start() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Quick start\n(.*?)^## ", text, flags=re.S | re.M)
    assert match, "README.md has no '## Quick start' section"
    return match.group(1)


def _words(line: str) -> list[str]:
    return shlex.split(line, comments=True)


def _quick_start_blocks() -> list[list[list[str]]]:
    """The Quick start's bash blocks, in order (install, the first command, the tests), as the
    words of each command line."""
    return [[_words(line) for line in block.splitlines() if _words(line)]
            for _, block in blocks_of(_quick_start(), "bash")]


def test_ci_runs_the_readme_install_and_test_lines():
    """.ci/run runs the Quick start's install and test lines, in order, with the venv's tools
    by their path (the README's `pip` and `python` after `. .venv/bin/activate` are
    `.venv/bin/pip` and `.venv/bin/python` there), and nothing else but its own set-up."""
    install, _, tests = _quick_start_blocks()[:3]
    activate = _words(ACTIVATE)
    assert install[:2] == [_words("python3 -m venv .venv"), activate]
    assert tests[-1] == _words("python -m pytest -q")
    venv = {"pip": ".venv/bin/pip", "python": ".venv/bin/python"}
    expected = [[venv.get(words[0], words[0]), *words[1:]]
                for words in install + tests if words != activate]
    ci = [_words(line) for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if _words(line)]
    assert [words for words in ci if words[0] not in ("set", "cd", "export")] == expected


def test_the_first_command_is_the_mnist1d_table():
    """The first thing a newcomer runs (issue 21.4) is the offline MNIST-1D grid, whose
    family file exists; digits stays the smoke family the tests use."""
    _, first, _ = _quick_start_blocks()[:3]
    assert first == [_words("snakemake --cores 2 reports/table_mnist1d.csv")]
    assert (ROOT / "config" / "mnist1d.yaml").is_file()
    assert yaml.safe_load((ROOT / "config" / "mnist1d.yaml").read_text())["run"]["dataset"] \
        == "mnist1d"


def test_every_fenced_command_parses_with_its_tool():
    """Every command line of a fenced bash block, in the README and the docs beside it, is one
    its tool accepts: the subcommand and every option exist (and, for the suite, the options
    validate); no placeholders, no .venv/bin/ paths, no tool the test does not know."""
    failures, seen = [], Counter()
    for doc in DOCS:
        for number, line in command_lines(doc):
            try:
                seen.update(check_line(line))
            except Bad as err:
                failures.append(f"{doc}:{number}: {line}\n    -> {err}")
    assert not failures, "\n".join(failures)
    # the check reaches every kind of command the README shows
    tools = ["benchmark", "snakemake", "mlflow", "torchrun", "pip"]
    tools += ["optuna-dashboard" if DASHBOARD.exists() else "optuna-dashboard not installed"]
    for tool in tools:
        assert seen[tool] > 0, f"no {tool} command checked: {dict(seen)}"


@pytest.mark.parametrize("line, complaint", [
    ("python -m benchmark tune --config config/digits.yaml --study s.journal --trialz 3",
     "--trialz"),
    ("python -m benchmark train --config config/digits.yaml --out r method=cll", "method"),
    ("python -m benchmark train --config config/digits.yaml --out r lrr=0.1", "lrr"),
    ("python -m benchmark trian --out r", "no subcommand"),
    ("python -m benchmark plan cifar11", "cifar11"),
    ("python -m benchmark topology torus n_agents=7", "n_agents"),
    ("snakemake --corez 2 reports/table_digits.csv", "--corez"),
    ("snakemake --cores 2 --config protocol=both reports/table_digits.csv", "--config"),
    ("snakemake --cores 2 reports/table_digits.csv --config protcol=both", "protcol"),
    ("snakemake --cores 2 reports/table_digitz.csv", "digitz"),
    ("mlflow ui --wrkers 1", "--wrkers"),
    ("mlflow uii", "uii"),
    ("MLFLOW_SERVER_ENABLE_JOBS=false mlflow ui", "MLFLOW_SERVER_ENABLE_JOBS"),
    pytest.param("optuna-dashboard --prot 8080 studies/d/ccl/ring-n16/alpha0.1.journal",
                 "--prot", marks=pytest.mark.skipif(not DASHBOARD.exists(),
                                                    reason="the dashboard extra is not installed")),
    ("pip install --upgradee torch", "--upgradee"),
    ('pip install -e ".[tests]"', "tests"),
    ("torchrun --nproc_per_node 2 -m benchmark train --out r --restartt", "--restartt"),
    (".venv/bin/snakemake --cores 2 reports/table_digits.csv", ".venv/bin/"),
    ("python -m benchmark tune --study S method=ccl [--trials N]", "placeholder"),
    ("python -m benchmark train --out results/<name>", "placeholder"),
    ("wget http://example.org/data.tar", "wget"),
])
def test_the_command_check_refuses_what_the_tool_would(line, complaint):
    """The checker is not vacuous: each case is a command its tool refuses (or a rule of the
    README broken), and the refusal names what is wrong."""
    with pytest.raises(Bad, match=re.escape(complaint)):
        check_line(line)


def test_python_blocks_compile_and_their_benchmark_imports_exist():
    """Every ```python block compiles, and every name it imports from the suite exists."""
    checked = 0
    for doc in DOCS:
        for number, code in fenced(doc, "python"):
            tree = compile(code, f"{doc}:{number}", "exec", ast.PyCF_ONLY_AST)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmark"):
                    module = importlib.import_module(node.module)
                    for alias in node.names:
                        assert hasattr(module, alias.name), \
                            f"{doc}:{number}: {node.module} has no {alias.name}"
                        checked += 1
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name.startswith("benchmark"):
                            importlib.import_module(alias.name)
                            checked += 1
    assert checked >= 5


def test_the_family_example_validates(tmp_path):
    """The README's YAML family example is a family the workflow accepts."""
    from benchmark.grid import load_family

    blocks = fenced("README.md", "yaml")
    assert blocks
    for number, text in blocks:
        data = yaml.safe_load(text)
        path = tmp_path / f"{data['run']['family']}.yaml"
        path.write_text(text)
        family = load_family(path)
        assert family.name == data["run"]["family"], f"README.md:{number}"


def test_paths_and_names_spell_numbers_as_the_code_does():
    """README "Paths and names", the one place that says how alpha and graphs are spelt, shows
    what the code writes for a MNIST-1D `ccl` run at alpha 1 on ring-16, seed 0."""
    from benchmark import tracking
    from benchmark.config import load_config
    from benchmark.grid import run_path, study_path
    from benchmark.tuning.study import study_name

    text = (ROOT / "README.md").read_text()
    section = re.search(r"^### Paths and names\n(.*?)^## ", text, flags=re.S | re.M)
    assert section, "README.md has no '### Paths and names' section"
    config = load_config(ROOT / "config" / "mnist1d.yaml",
                         ["method=ccl", "alpha=1.0", "seed=0", "topology=ring", "n_agents=16"])
    shown = {
        f"results/{run_path(config)}/": "run folder",
        study_path("mnist1d", "ccl", "ring-n16", 1.0): "study journal",
        study_name(config): "study name",
        tracking.run_name(config): "MLflow run name",
        f"tags.alpha = '{tracking.number(config.alpha)}'": "MLflow tag",
    }
    for spelling, what in shown.items():
        assert f"`{spelling}" in section.group(1), f"{what}: the code writes {spelling!r}"


# phrases the README quotes that are what a program prints, not section names
QUOTED_MESSAGES = {"No data", "Directory cannot be locked"}


def _headings(doc: str) -> list[str]:
    return re.findall(r"^#{2,4} (.+)$", (ROOT / doc).read_text(), flags=re.M)


def _names_a_section(name: str, headings: list[str]) -> bool:
    return any(h == name or h.startswith((f"{name} ", f"{name}:")) for h in headings)


def test_section_references_name_sections_that_exist():
    """A section the README refers to by name ("Tuning", "On a GPU box"), and one a message,
    comment or doc elsewhere sends the reader to (README "Several runs per GPU"), is a heading
    of the README (or, for the README's own references, of docs/DESIGN.md); a renamed section
    breaks no pointer silently."""
    readme = _headings("README.md")
    missing = []
    text = (ROOT / "README.md").read_text()
    for name in set(re.findall(r'"([A-Z][^"`\n]{2,60})"', text)) - QUOTED_MESSAGES:
        if not _names_a_section(name, readme + _headings("docs/DESIGN.md")):
            missing.append(f"README.md: \"{name}\"")
    sources = [p for folder in ("benchmark", "benchmarks", "workflow", "config", "profiles",
                                "docs", "reports", "studies", "tests")
               for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in
               {".py", ".smk", ".rst", ".yaml", ".md", ".sh"}] + [ROOT / "Snakefile"]
    pointer = re.compile(r"""README(?:'s)?[ ,:]{0,3}\\?["']([A-Z][^"'\\\n]{2,60})\\?["']""")
    for path in sources:
        for name in pointer.findall(path.read_text(errors="replace")):
            if not _names_a_section(name, readme):
                missing.append(f"{path.relative_to(ROOT)}: README \"{name}\"")
    assert not missing, "no such section:\n" + "\n".join(sorted(missing))
