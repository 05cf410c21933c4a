"""Helpers shared by the tests of the synchronous face."""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from threadlock.sync import SyncThreadLock
from threadlock.testing import FakeOpenAI

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py as module ``example_<name>`` (once per process)."""
    module_name = f"example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def check_burst(answers: list[tuple[int, dict[str, Any]]], fake: FakeOpenAI, users: int) -> None:
    """Every request answered 200, no conversation_locked, each user's messages answered once."""
    assert [status for status, _ in answers] == [200] * len(answers)
    assert fake.concurrency_errors == 0
    for u in range(users):
        bodies = [body for _, body in answers if body["user_id"] == f"u{u}"]
        assert sorted(b["reply"] for b in bodies) == sorted(
            f"Reply to: message {i}" for i in range(len(bodies))
        )
        assert len({b["fence"] for b in bodies}) == len(bodies)  # one turn, one fence each


def in_threads(post: Any, users: int, messages: int) -> list[tuple[int, dict[str, Any]]]:
    """Call ``post(user, text)`` from one thread per message; return the answers."""
    answers: list[tuple[int, dict[str, Any]]] = []
    threads = [
        threading.Thread(target=lambda u=u, i=i: answers.append(post(f"u{u}", f"message {i}")))
        for i in range(messages)
        for u in range(users)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == users * messages
    return answers


def check_threaded_server_burst(app: Any, lock: SyncThreadLock, fake: FakeOpenAI) -> None:
    """Serve the WSGI ``app`` by a real threaded server and post a burst to its ``/webhook``
    from threads: every turn answered, none locked, ``/locks`` and the lock empty after."""
    import httpx
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:

        def post(user: str, text: str) -> tuple[int, dict[str, Any]]:
            answer = httpx.post(f"{base}/webhook", json={"user_id": user, "text": text}, timeout=60)
            return answer.status_code, answer.json()

        check_burst(in_threads(post, users=2, messages=5), fake, users=2)
        assert httpx.get(f"{base}/locks").json() == []
    finally:
        server.shutdown()
        thread.join(10)
    assert lock.held() == []
