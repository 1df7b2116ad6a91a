"""The documentation is true: the README is a front door (≤ 200 lines) whose quick starts run exactly as
written, every ``embedrail`` flag the docs name exists, and every link between the docs resolves."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from embedrail.integration.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "CHANGELOG.md"]


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else None]


def _block(text: str, lang: str) -> str:
    (block,) = re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)
    return block


def _subparsers() -> dict[str, object]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")  # noqa: SLF001
    return dict(action.choices)


def _flags(parser: object) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}  # type: ignore[attr-defined]  # noqa: SLF001


def test_the_readme_is_a_front_door() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "make demo" in text and "make test" in text
    assert "../shared" not in text and max(len(line) for line in text.splitlines()) < 200
    for page in ("sync", "documents", "exactness", "stores", "embedding", "search", "serving", "airflow", "benchmarks",
                 "limits", "security", "design", "development"):  # fmt: skip
        assert f"(docs/{page}.md)" in text, page


def test_every_embedrail_flag_the_docs_name_exists() -> None:
    """A command written ``embedrail SUB ... --flag`` must have the flag; a flag named alone (`--flag`)
    must be one of some ``embedrail`` command (the benchmarks page names its scripts' flags, the changelog
    the flags that are gone)."""
    subs = _subparsers()
    every = set().union(*(_flags(p) for p in subs.values()))
    problems = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        text = re.sub(r"\\\n\s*", " ", text)  # shell continuation lines
        commands = re.findall(r"embedrail (reindex|search|status|serve)\b([^`\n]*)", text)
        for sub, rest in commands:
            rest = rest.split("#")[0]
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest):
                if flag not in _flags(subs[sub]):
                    problems.append(f"{page.name}: embedrail {sub} {flag}")
        if page.name in ("benchmarks.md", "CHANGELOG.md"):  # the benchmark scripts' flags; flags that are gone
            continue
        for flag in re.findall(r"`(--[a-z][a-z-]*)[^`]*`", text):
            if flag not in every:
                problems.append(f"{page.name}: {flag} (no embedrail command has it)")
    assert not problems, problems
    assert len(re.findall(r"embedrail (?:reindex|search|status|serve)\b", "".join(p.read_text() for p in PAGES))) > 20


def test_links_between_the_docs_resolve() -> None:
    def anchors(page: Path) -> set[str]:
        slugs = set()
        for heading in re.findall(r"(?m)^#{1,6} (.+)$", page.read_text(encoding="utf-8")):
            slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            slugs.add(slug)
        return slugs

    problems = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                problems.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{page.name}: {target} (no such heading)")
    assert not problems, problems


def _venv_env(cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EMBEDRAIL_LEDGER", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PWD"] = str(cwd)
    return env


@pytest.mark.slow  # a fresh interpreter and a model load each: make test runs them, make test-fast does not
def test_the_command_line_quick_start_runs_as_written(tmp_path: Path) -> None:
    script = _block(_section(README.read_text(encoding="utf-8"), "## Quick start: the command line"), "bash")
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=_venv_env(tmp_path),
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = re.findall(r"(\d+) documents, (\d+) chunks: embedded (\d+)", out.stdout)
    assert len(runs) == 2 and int(runs[0][2]) > 0 and runs[1][2] == "0", out.stdout  # the second run embeds nothing
    assert "argparse" in out.stdout.split("embedded 0", 1)[1] and "in sync" in out.stdout
    assert (tmp_path / ".embedrail" / "ledger.sqlite").exists()


def test_the_bucket_quick_start_runs_as_written(tmp_path: Path, s3_env: dict[str, str]) -> None:
    """Against the test S3 server (its credentials and endpoint in the environment, as the README says): a bucket
    of handbooks, one a PDF, one a Word file, one Markdown, and a draft the ``exclude`` pattern leaves out."""
    import s3fs
    from test_documents import make_docx, make_pdf

    script = _block(_section(README.read_text(encoding="utf-8"), "## Quick start: documents in a bucket"), "bash")
    script = "\n".join(line for line in script.splitlines() if not line.startswith("pip install"))  # installed here
    fs = s3fs.S3FileSystem()
    if not fs.exists("handbooks"):
        fs.mkdir("handbooks")
    if fs.exists("handbooks/hr"):
        fs.rm("handbooks/hr", recursive=True)
    leave = "Parents may take twenty days of paid parental leave in the first year after a birth or adoption."
    make_pdf(tmp_path / "leave.pdf", [("Leave", 0, "Leave policies of the company."), ("Parental leave", 1, leave)], title="HR")
    make_docx(tmp_path / "onboarding.docx", "Onboarding", "New starters get a laptop on their first morning.")
    fs.pipe("handbooks/hr/leave.pdf", (tmp_path / "leave.pdf").read_bytes())
    fs.pipe("handbooks/hr/onboarding.docx", (tmp_path / "onboarding.docx").read_bytes())
    fs.pipe("handbooks/hr/expenses.md", b"# Expenses\n\nReceipts are due within thirty days.")
    fs.pipe("handbooks/hr/drafts/leave-2027.md", b"# Draft\n\nForty days of parental leave.")
    work = tmp_path / "work"
    work.mkdir()
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=_venv_env(work), capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = re.findall(r"(\d+) documents, (\d+) chunks: embedded (\d+)", out.stdout)
    assert [r[0] for r in runs] == ["3", "3"] and int(runs[0][2]) > 0 and runs[1][2] == "0", out.stdout
    assert "files: 4 listed, 0 fetched, 0 parsed, 3 unchanged" in out.stdout, out.stdout  # the draft: listed, left out
    hits = out.stdout.split("embedded 0", 1)[1]
    assert re.search(r" 1\. [\d.]+\s+leave\.pdf ", hits), hits
    assert "leave-2027" not in out.stdout


@pytest.mark.slow  # a fresh interpreter and a model load each: make test runs them, make test-fast does not
def test_the_python_quick_start_runs_as_written() -> None:
    code = _block(_section(README.read_text(encoding="utf-8"), "## Quick start: Python"), "python")
    import shutil

    shutil.rmtree("/tmp/embedrail-quickstart", ignore_errors=True)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                             env={k: v for k, v in os.environ.items() if k != "EMBEDRAIL_LEDGER"})  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        assert "embedded" in out.stdout and out.stdout.strip().splitlines()[-3].endswith("argparse"), out.stdout
    finally:
        shutil.rmtree("/tmp/embedrail-quickstart", ignore_errors=True)


@pytest.mark.usefixtures("airflow_home")
def test_the_airflow_quick_start_config_builds_its_dag(tmp_path: Path) -> None:
    from embedrail.airflow import build_dags_from_folder

    yaml_text = _block(_section(README.read_text(encoding="utf-8"), "## Quick start: Airflow"), "yaml")
    name = shlex.split(yaml_text.splitlines()[0])[-1]  # "# dags/configs/docs.yaml"
    (tmp_path / Path(name).name).write_text(yaml_text, encoding="utf-8")
    dags = build_dags_from_folder(tmp_path)
    dag = dags["docs_reindex"]
    assert "config-error" not in dag.tags
    assert {t.task_id for t in dag.tasks} == {"plan", "partitions", "sync_partition", "delete_stale", "report"}


from test_airflow_env import airflow_home  # noqa: E402, F401 - the session fixture
