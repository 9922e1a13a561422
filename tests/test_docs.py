"""The documentation tells the truth about the CLI.

- docs/cli.md equals a fresh generation from the live typer app, and names every command;
- every console session in docs/user-guide.md is replayed for real, in order, in a scratch
  directory: each command must exit 0 (or the code shown by a following ``$ echo $?``), and
  each output line the guide shows must appear in what the command printed now;
- the Python example in docs/python-api.md runs;
- docs/inspect-json.md names every field the JSON outputs carry and every exit code.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


from adapterctl.cli import reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent

# Output lines that legitimately change between runs: dates, hashes, temp paths, timings.
_VOLATILE = re.compile(r"\d{4}-\d{2}-\d{2}|[0-9a-f]{16,}|/tmp/|\d+\.\d+ ?s\b")
_TRIM = {"...", "…", "[...]"}


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)
    exit_code: int = 0
    line: int = 0  # where in the file, for messages


def console_steps(text: str) -> list[Step]:
    """The '$ ' commands of every ```console block, with their shown output and expected exit code."""
    steps: list[Step] = []
    in_block = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_block = line.strip() == "```console" if not in_block else False
            continue
        if not in_block:
            continue
        if line.startswith("$ "):
            command = line[2:].strip()
            if command == "echo $?":
                steps.append(Step(command, line=number))
            else:
                steps.append(Step(command, line=number))
        elif steps:
            steps[-1].expected.append(line)
    # '$ echo $?' documents the exit code of the command before it.
    merged: list[Step] = []
    for step in steps:
        if step.command == "echo $?":
            assert merged, f"line {step.line}: 'echo $?' with no command before it"
            codes = [e.strip() for e in step.expected if e.strip()]
            assert len(codes) == 1 and codes[0].isdigit(), f"line {step.line}: 'echo $?' must show one number"
            merged[-1].exit_code = int(codes[0])
        else:
            merged.append(step)
    return merged


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "100"  # the guide's output was taken on a 100-column terminal
    env.pop("ADAPTERCTL_DEBUG", None)
    return env


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def _in_process(command: str) -> list[str] | None:
    """argv for a plain 'adapterctl ...' line that needs no shell (pipes, globs, redirections); else None."""
    if not command.startswith("adapterctl "):
        return None
    unquoted = re.sub(r"'[^']*'", "", command)
    if any(ch in unquoted for ch in "|<>;&$`\"*?[~(){}"):
        return None
    return shlex.split(command)[1:]


def run_step(step: Step, cwd: Path) -> Result:
    """Run one documented command in ``cwd``: in this process when no shell is needed (fast), else with bash."""
    argv = _in_process(step.command)
    if argv is not None:
        from adapterctl.cli.main import run

        out, err = io.StringIO(), io.StringIO()
        old_cwd, old_env, env = os.getcwd(), dict(os.environ), _env()  # _env() reads os.environ: before clear()
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = run(argv)
        finally:
            os.chdir(old_cwd)
            os.environ.clear()
            os.environ.update(old_env)
        return Result(code, out.getvalue(), err.getvalue())
    command = step.command
    if "| jq" in command and shutil.which("jq") is None:
        command = command.split("| jq", 1)[0]
    proc = subprocess.run(["bash", "-c", "set -o pipefail; " + command], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=300)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _squash(text: str) -> str:
    return " ".join(text.split())


def missing_lines(step: Step, output: str) -> list[str]:
    """Shown output lines that the command did not print (volatile and trimmed lines excepted)."""
    got = [_squash(line) for line in output.splitlines()]
    missing = []
    for line in step.expected:
        want = _squash(line)
        if not want or want in _TRIM or _VOLATILE.search(want):
            continue
        if want.endswith("…"):  # a line the guide shortened
            want = want[:-1].rstrip()
        if not any(want in g for g in got):
            missing.append(line)
    return missing


# -- the CLI reference ----------------------------------------------------------------------

def test_cli_reference_is_generated_from_the_app():
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == reference.render(), \
        "docs/cli.md is stale: run 'python -m adapterctl.cli.reference'"


def test_cli_reference_names_every_command_and_option():
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    paths = reference.command_paths()
    assert {"adapterctl inspect", "adapterctl validate", "adapterctl tag", "adapterctl split",
            "adapterctl convert", "adapterctl demo"} <= set(paths)
    sections = re.split(r"^## ", text, flags=re.M)
    by_path = {s.split("\n", 1)[0]: s for s in sections[1:]}
    for cmd, ctx in reference.command_tree():
        assert ctx.command_path in by_path, f"{ctx.command_path} has no section in docs/cli.md"
        for param in cmd.get_params(ctx):
            for opt in param.opts if param.param_type_name == "option" else [param.name.upper()]:
                assert f"`{opt}`" in by_path[ctx.command_path], f"{ctx.command_path}: {opt} not documented"


def test_reference_is_deterministic_and_plain(monkeypatch):
    first = reference.render()
    monkeypatch.setenv("COLUMNS", "37")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert reference.render() == first
    assert "\x1b" not in first


def test_reference_check_flag(tmp_path):
    target = tmp_path / "cli.md"
    assert reference.main(["--check", "--path", str(target)]) == 1  # missing
    assert reference.main(["--path", str(target)]) == 0
    assert reference.main(["--check", "--path", str(target)]) == 0
    target.write_text(target.read_text(encoding="utf-8") + "edited\n", encoding="utf-8")
    assert reference.main(["--check", "--path", str(target)]) == 1


# -- the user guide ---------------------------------------------------------------------------

def test_user_guide_sessions_replay(tmp_path):
    steps = console_steps((DOCS / "user-guide.md").read_text(encoding="utf-8"))
    assert sum(s.command.startswith("adapterctl ") for s in steps) >= 20
    verbs = {s.command.split()[1] for s in steps if s.command.startswith("adapterctl ")}
    assert {"inspect", "validate", "tag", "split", "convert", "merge", "prune", "demo"} <= verbs
    for step in steps:
        proc = run_step(step, tmp_path)
        output = proc.stdout + proc.stderr
        where = f"docs/user-guide.md:{step.line}: $ {step.command}"
        assert proc.returncode == step.exit_code, f"{where}\nexit {proc.returncode}, expected {step.exit_code}\n{output}"
        if "| jq" in step.command and shutil.which("jq") is None:
            continue
        missing = missing_lines(step, output)
        assert not missing, f"{where}\nshown but not printed now: {missing}\n--- printed:\n{output}"


def test_user_guide_mentions_every_verb_and_convention():
    text = (DOCS / "user-guide.md").read_text(encoding="utf-8")
    for word in ("--strict", "--preset b-lora", "--role", "--keep-blocks", "--to peft", "--strip-metadata",
                 "--force", "--quiet", "lora_adapter_metadata", "adapter_config.json", "set_adapters",
                 "load_lora_weights", "adapterctl.open"):
        assert word in text, word


# -- the Python API page ----------------------------------------------------------------------

def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


def test_python_api_example_runs(tmp_path):
    from adapterctl.examples.make import BLORA, HERE, LOCON, PAINTING

    for name in (BLORA, LOCON, PAINTING):
        shutil.copy(HERE / name, tmp_path / name)
    blocks = _python_blocks((DOCS / "python-api.md").read_text(encoding="utf-8"))
    assert blocks
    for block in blocks:
        proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{block}\n{proc.stdout}{proc.stderr}"


# -- the JSON page ----------------------------------------------------------------------------

def _keys(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            if k not in ("metadata", "values", "dtypes", "components", "kinds", "lycoris", "roles"):
                yield from _keys(v, prefix + k + ".")
    elif isinstance(obj, list):
        for item in obj:
            yield from _keys(item, prefix)


def test_inspect_json_page_covers_every_field():
    import adapterctl
    from adapterctl.examples.make import BLORA, HERE, LOCON
    from adapterctl.report import SCHEMA, inspect_report
    from adapterctl.stats import block_stats

    text = (DOCS / "inspect-json.md").read_text(encoding="utf-8")
    assert SCHEMA in text
    for name in (BLORA, LOCON):
        with adapterctl.open(HERE / name) as a:
            report = inspect_report(a)
            report["weights"] = block_stats(a)
        for key in set(_keys(report)):
            assert f"`{key}`" in text, f"inspect --json field '{key}' is not documented"
    for key in ("ok", "strict", "files", "summary", "status", "checks", "name", "message", "failed", "warned",
                "output", "layout", "tensors", "bytes", "sha256", "source_sha256", "error",
                "error.code", "error.message", "error.hint"):
        assert f"`{key}`" in text, key


def test_inspect_json_page_lists_every_exit_code():
    from adapterctl import errors

    text = (DOCS / "inspect-json.md").read_text(encoding="utf-8").split("## Exit codes", 1)[1]
    from adapterctl.hub import errors as hub_errors

    classes = [c for module in (errors, hub_errors) for c in vars(module).values()
               if isinstance(c, type) and issubclass(c, errors.AdapterError)]
    for cls in classes:
        row = next((line for line in text.splitlines() if f"`{cls.code}`" in line and line.startswith("|")), None)
        assert row is not None, f"error code {cls.code} is not in the table"
        assert f"| {cls.exit_code} |" in row, f"{cls.code}: exit {cls.exit_code} not in its row: {row}"


def test_inspect_json_page_example_is_current():
    import json

    from adapterctl.examples.make import HERE, LOCON

    text = (DOCS / "inspect-json.md").read_text(encoding="utf-8")
    block = re.search(r"<summary>locon_example.safetensors</summary>\n\n```json\n(.*?)^```", text, flags=re.M | re.S)
    assert block, "the full inspect --json example is missing"
    proc = subprocess.run([str(BIN / "adapterctl"), "inspect", LOCON, "--json"], cwd=HERE, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(block.group(1)) == json.loads(proc.stdout)


# -- the index --------------------------------------------------------------------------------

_PENDING = {"benchmarks.md", "../spec/FORMAT.md"}  # written by others; linked before they land


def _anchors(text: str) -> set[str]:
    """GitHub-style heading anchors of a Markdown page (headings inside code fences ignored)."""
    anchors, fenced = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_doc_links_resolve():
    for page in ("index.md", "user-guide.md", "python-api.md", "inspect-json.md", "cli.md"):
        text = (DOCS / page).read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
            if "://" in target or target in _PENDING:
                continue
            path = DOCS / target if target else DOCS / page
            assert path.exists(), f"docs/{page} links to missing {target}"
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path.read_text(encoding="utf-8")), f"docs/{page}: no #{anchor} in {path.name}"


def test_help_reads_like_a_well_kept_cli():
    """No type dump in --help: flags show no type, options a metavar, arguments their NAME."""
    from adapterctl.cli import reference
    from adapterctl.cli.main import run

    for path in reference.command_paths()[1:]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert run(path.split()[1:] + ["--help"]) == 0
        text = out.getvalue()
        for dump in ("<bool>", "<list[", "<str>", "<path>", "<int>", "<float>", "{path", "{paths"):
            assert dump not in text, f"{path} --help shows {dump}"
        assert "Usage:" in text
