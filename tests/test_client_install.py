"""The client's own distribution (client/): a program that only talks to a server installs
none of what serving needs, and the client it gets works."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER_PACKAGES = {"flask", "werkzeug", "sqlalchemy", "alembic", "redis", "gevent", "gunicorn", "psycopg", "psycopg-binary", "pyjwt"}


def test_a_client_only_install_brings_nothing_of_the_server(tmp_path: Path) -> None:
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt", ROOT / "client"],
        check=True, capture_output=True,
    )
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True, text=True
    ).stdout
    installed = {line.partition("==")[0].lower() for line in listed.split()}
    assert "eventlog-client" in installed and "httpx" in installed
    assert installed & SERVER_PACKAGES == set()
    # Outside the checkout, so the installed copy is what is imported.
    code = "import eventlog.client as c; c.Client('http://127.0.0.1:1').close(); print(c.__file__)"
    imported = subprocess.run(
        [python, "-P", "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path
    ).stdout
    assert str(tmp_path / "venv") in imported
