"""A workspace that cannot be written: one clear line in the CLI and the app, nothing changed.

Tests run as root, whom file permissions do not stop, so the workspace is made read-only the way
it is for root too: the immutable flag (chattr +i), which the kernel enforces for every user, or a
read-only connection (what SQLite falls back to when it cannot open the file for writing)."""

from __future__ import annotations

import hashlib
import socket
import sqlite3
import subprocess

import pytest

from ctxdistill import cli
from ctxdistill.store import ReadOnlyError, Store


@pytest.fixture
def immutable():
    """chattr +i on paths, removed again at the end; skips where the filesystem has no such flag."""
    marked = []

    def mark(*paths):
        for path in paths:
            if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
                pytest.skip("chattr +i is not supported here")
            marked.append(path)

    yield mark
    for path in marked:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def workspace_with_prompts(tmp_path):
    home = tmp_path / "ws"
    with Store(home) as store:
        store.add_prompts("mine", [{"text": "What is rain?"}])
    (tmp_path / "more.txt").write_text("Why is the sky blue?\n")
    return home


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("what", ["database", "directory"])
def test_cli_says_the_workspace_is_read_only_and_changes_nothing(tmp_path, immutable, capsys, what):
    home = workspace_with_prompts(tmp_path)
    db = home / "ctxdistill.db"
    before = digest(db)
    immutable(db if what == "database" else home)
    argv = ["import", str(tmp_path / "more.txt"), "--prompt-set", "mine", "--workspace", str(home)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert ("is read-only" if what == "database" else "it is not writable") in err
    # how to fix it, for the cause at hand (README): chmod would not lift an immutable flag
    assert f"chattr -i {db if what == 'database' else home}" in err and "another --workspace" in err
    port = str(_free_port())
    assert cli.main(["serve", "--workspace", str(home), "--port", port]) == 2  # the app does not start
    assert capsys.readouterr().err.startswith("error: ")
    assert digest(db) == before


def test_write_after_the_file_turned_read_only_is_refused_cleanly(tmp_path):
    home = workspace_with_prompts(tmp_path)
    store = Store(home)
    read_only_connection(store)
    with pytest.raises(ReadOnlyError, match="is read-only"):
        store.add_prompts("mine", [{"text": "Why is the sky blue?"}])
    store.close()
    with Store(home) as store:
        assert [p["text"] for p in store.get_prompts("mine")] == ["What is rain?"]
        assert store.integrity_ok()


def test_app_shows_the_read_only_message(tmp_path):
    """Through HTTP, as the page gets it: the error's text, not a traceback or a bare 'Error'."""
    from gradio_client import Client

    from ctxdistill.ui.app import build_app
    from ctxdistill.ui.common import AppContext

    ctx = AppContext(home=workspace_with_prompts(tmp_path))
    blocks = build_app(ctx)
    port = _free_port()
    blocks.queue().launch(
        prevent_thread_lock=True, server_port=port, quiet=True, show_error=True, **ctx.server_options()
    )
    try:
        read_only_connection(ctx.store)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        with pytest.raises(Exception, match="is read-only .* nothing was changed"):
            client.predict("name: x\nprinciples: [be kind]\n", "", api_name="/save_version")
        assert client.predict(api_name="/versions") == []  # reading still works
    finally:
        blocks.close()


def read_only_connection(store: Store) -> None:
    """Swap the store's write connection for one SQLite opened read-only."""
    store._conn.close()
    store._conn = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
