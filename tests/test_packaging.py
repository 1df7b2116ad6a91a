"""What the wheel installs: one import name, ``embedrail``, with every layer below it (the repository's
folders ``embed_core/``, ``connectors/`` and ``integration/`` are mapped into it), ``py.typed``, the
``embedrail`` command; nothing that could collide with a user's ``connectors`` or ``integration``."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import embedrail

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_installs_only_the_embedrail_package(tmp_path: Path) -> None:
    uv = Path(sys.executable).with_name("uv")
    subprocess.run([str(uv), "build", "--quiet", "--wheel", "--out-dir", str(tmp_path / "dist"), str(ROOT)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("embedrail-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"embedrail", f"embedrail-{embedrail.__version__}.dist-info"}
    for module in ("embedrail/py.typed", "embedrail/connectors/elasticsearch.py", "embedrail/integration/sources/sql.py",
                   "embedrail/integration/airflow/dag.py", "embedrail/embed_core/serve.py", "embedrail/airflow.py"):  # fmt: skip
        assert module in names, module

    # a fresh virtualenv, the wheel and its dependencies (from uv's cache), used from a directory of its own
    venv = tmp_path / "venv"
    subprocess.run([str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120)
    subprocess.run([str(uv), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(wheel)], check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    user = tmp_path / "project"
    (user / "integration").mkdir(parents=True)  # a user's own packages with the common names
    (user / "integration" / "__init__.py").write_text("MINE = True\n")
    (user / "connectors").mkdir()
    (user / "connectors" / "__init__.py").write_text("MINE = True\n")
    code = (
        "import importlib.util, sys\n"
        "from embedrail import sync, connect, open_embedder, SyncEngine, SyncOptions, Target, Searcher, open_reranker\n"
        "import integration, connectors\n"
        "assert integration.MINE and connectors.MINE  # the user's own, not embedrail's\n"
        "assert importlib.util.find_spec('embed_core') is None\n"
        "assert sync.__module__ == 'embedrail.integration.engine' and connect.__module__ == 'embedrail.connectors'\n"
        "assert 'torch' not in sys.modules  # the face is lazy\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the user's interpreter knows only its own packages
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=user, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    cli = subprocess.run([str(venv / "bin" / "embedrail"), "reindex", "--help"], env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert cli.returncode == 0 and "--adopt" in cli.stdout, cli.stderr


def test_the_face_is_lazy_and_complete() -> None:
    code = "import sys, embedrail; assert not [m for m in sys.modules if m.startswith('embedrail.') and m != 'embedrail.errors'], sorted(sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60).returncode == 0
    from embedrail import Searcher, SyncEngine, connect, open_embedder, sync
    from embedrail.connectors import connect as connect2
    from embedrail.integration.engine import SyncEngine as Engine2
    from embedrail.integration.engine import sync as sync2
    from embedrail.integration.search import Searcher as Searcher2

    assert (sync, SyncEngine, connect, Searcher) == (sync2, Engine2, connect2, Searcher2) and callable(open_embedder)
    assert set(embedrail.__all__) <= set(dir(embedrail))
