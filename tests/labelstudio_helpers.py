"""Helpers for the Label Studio tests: a proxy that injects network faults, and a store with pairs."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from engine.store import Store, make_pair_id, text_hash, utc_now
from engine.workspace import Workspace

# What the proxy does with one request: forward it, forward it and then drop the connection without a
# response (the server acted, the client never learns it), or respond with a status without forwarding.
FORWARD = "forward"
DROP_RESPONSE = "drop_response"


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of a Label Studio server that applies scripted faults.

    `faults` maps (method, path prefix) to a list of actions, used one per matching request in order.
    Requests without a remaining action are forwarded. An action is FORWARD, DROP_RESPONSE or an HTTP
    status code to respond with.
    """

    def __init__(self, target: str, faults: dict[tuple[str, str], list[str | int]]) -> None:
        self.target = target.rstrip("/")
        self.faults = {key: list(actions) for key, actions in faults.items()}
        self.log: list[tuple[str, str, str | int]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self, method: str, path_prefix: str, action: str | int | None = None) -> int:
        """Count the logged requests that match, optionally only those that met `action`."""
        return sum(
            1 for logged_method, path, logged_action in self.log
            if logged_method == method and path.startswith(path_prefix) and action in (None, logged_action)
        )

    def _next_action(self, method: str, path: str) -> str | int:
        with self._lock:
            action: str | int = FORWARD
            for (fault_method, prefix), actions in self.faults.items():
                if fault_method == method and path.startswith(prefix) and actions:
                    action = actions.pop(0)
                    break
            self.log.append((method, path, action))
            return action

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class names it so
                pass

            def do_GET(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                self._handle()

            def do_PATCH(self) -> None:
                self._handle()

            def do_DELETE(self) -> None:
                self._handle()

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                action = proxy._next_action(self.command, self.path)
                if isinstance(action, int):
                    self._answer(action, json.dumps({"detail": "injected fault"}).encode(), "application/json")
                    return

                headers = {name: value for name, value in self.headers.items() if name.lower() in ("authorization", "content-type")}
                upstream = requests.request(self.command, proxy.target + self.path, headers=headers, data=body, timeout=120)
                if action == DROP_RESPONSE:
                    self.close_connection = True
                    return
                self._answer(upstream.status_code, upstream.content, upstream.headers.get("Content-Type", "application/json"))

            def _answer(self, status: int, content: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

        return Handler


def seed_pairs(
    root: Path, prompts: list[tuple[str, list[str]]], *, left_side: Callable[[int], str] = lambda index: "ab"[index % 2]
) -> tuple[Workspace, Store, list[str]]:
    """Create a workspace whose store contains `prompts` (prompt text, response texts) and one pair per
    consecutive two responses, selected in one round; return the workspace, the open store and the pair ids.

    No embedding is computed: the pull and push paths never read embeddings.
    """
    workspace = Workspace(root)
    workspace.create()
    store = Store(workspace.store_path)
    pair_ids: list[str] = []
    with store.transaction() as db:
        round_id = db.execute(
            "INSERT INTO rounds (strategy, budget, seed, pool_size, votes_at_start, options, created_at) "
            "VALUES ('random', 0, 0, 0, 0, '{}', ?)",
            (utc_now(),),
        ).lastrowid
        for prompt_number, (prompt, responses) in enumerate(prompts):
            prompt_row = db.execute(
                "INSERT INTO prompts (prompt_id, text, text_hash) VALUES (?, ?, ?)",
                (f"prompt-{prompt_number}", prompt, text_hash(prompt)),
            ).lastrowid
            rows = []
            for response_number, response in enumerate(responses):
                response_id = f"prompt-{prompt_number}-response-{response_number}"
                rows.append(
                    (
                        response_id,
                        db.execute(
                            "INSERT INTO responses (response_id, prompt_row, model, text, text_hash, metadata) "
                            "VALUES (?, ?, ?, ?, ?, '{}')",
                            (response_id, prompt_row, f"model-{response_number % 2}", response, text_hash(response)),
                        ).lastrowid,
                    )
                )
            for first, second in zip(rows[::2], rows[1::2]):
                pair_id = make_pair_id(first[0], second[0])
                db.execute(
                    "INSERT INTO pairs (pair_id, prompt_row, response_a, response_b, round_id, rank, left_side) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (pair_id, prompt_row, first[1], second[1], round_id, len(pair_ids), left_side(len(pair_ids))),
                )
                pair_ids.append(pair_id)
    return workspace, store, pair_ids
