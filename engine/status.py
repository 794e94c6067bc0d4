"""Counts of a workspace and the preference model's held-out quality."""

from __future__ import annotations

import json
import os
from typing import Any

from engine.store import Store
from engine.workspace import Workspace

# Keys of `prefscout labelstudio status --json` that scripts may rely on.
LABELSTUDIO_STATUS_KEYS = ("url", "version", "project_id", "tasks", "annotations")


def workspace_status(workspace: Workspace, store: Store) -> dict[str, Any]:
    """Return counts (integers) and, once there are votes, the model's held-out metrics."""
    count = store.count
    status: dict[str, Any] = {
        "workspace": str(workspace.root),
        "prompts": count("SELECT COUNT(*) FROM prompts"),
        "responses": count("SELECT COUNT(*) FROM responses"),
        "embedded": count(
            "SELECT COUNT(*) FROM responses r JOIN embeddings e ON e.text_hash = r.text_hash "
            "AND e.model = ? AND e.mode = ?",
            (store.get_meta("embedding_model") or "", store.get_meta("embedding_mode") or ""),
        ),
        "embedding_truncated": count("SELECT COUNT(*) FROM responses WHERE embed_truncated = 1"),
        "pairs_selected": count("SELECT COUNT(*) FROM pairs"),
        "tasks_pushed": count("SELECT COUNT(*) FROM pairs WHERE task_id IS NOT NULL"),
        "votes": count("SELECT COUNT(*) FROM votes"),
        "pairs_with_votes": count("SELECT COUNT(DISTINCT pair_id) FROM votes"),
        "rounds": count("SELECT COUNT(*) FROM rounds"),
        "embedding_model": store.get_meta("embedding_model"),
        "votes_by_outcome": {
            row["outcome"]: row["n"]
            for row in store.execute("SELECT outcome, COUNT(*) AS n FROM votes GROUP BY outcome ORDER BY outcome")
        },
        "position": position_bias(store),
        "last_round": last_round(store),
        "preference_model": None,
    }
    if status["votes"]:
        status["preference_model"] = _heldout(workspace, store)
    return status


def _heldout(workspace: Workspace, store: Store) -> dict[str, Any] | None:
    from engine.preference import evaluate_heldout
    from engine.rounds import load_corpus, training_votes

    # The same features as the model that `prefscout round` fits, so the estimate is of that model.
    settings = workspace.load_config().round
    corpus = load_corpus(workspace, store, generator_feature=settings.generator_feature)
    diffs, labels, groups = training_votes(store, corpus)
    if len(labels) == 0:
        return None
    return evaluate_heldout(diffs, labels, groups)


def last_round(store: Store) -> dict[str, Any] | None:
    """Describe the latest round: id, strategy, budget, seed, pool size, time and its recorded options.

    Rounds recorded before the round settings joined `options` contain the strategy options only.
    """
    row = store.execute(
        "SELECT id, strategy, budget, seed, pool_size, votes_at_start, options, created_at "
        "FROM rounds ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    described = {key: row[key] for key in row.keys() if key != "options"}
    described["options"] = json.loads(row["options"])
    return described


def format_status(status: dict[str, Any]) -> list[str]:
    lines = [
        f"workspace: {status['workspace']}",
        f"prompts: {status['prompts']}",
        f"responses: {status['responses']} ({status['embedded']} embedded with {status['embedding_model']}, "
        f"{status['embedding_truncated']} embedded from head and tail windows only)",
        f"rounds: {status['rounds']}" + _format_last_round(status["last_round"]),
        f"pairs selected: {status['pairs_selected']}",
        f"tasks pushed: {status['tasks_pushed']}",
        f"votes: {status['votes']} on {status['pairs_with_votes']} pairs "
        + "(" + ", ".join(f"{key} {value}" for key, value in status["votes_by_outcome"].items()) + ")",
    ]
    lines.append(format_position(status["position"]))
    model = status["preference_model"]
    if model:
        lines.append(
            f"preference model: held-out accuracy {model['accuracy']:.3f}, log-likelihood "
            f"{model['log_likelihood']:.3f} per vote ({model['n_train']} train / {model['n_test']} test votes, "
            "split by prompt)"
        )
    elif status["votes"]:
        lines.append("preference model: too few decisive votes for a held-out estimate")
    return lines


def _format_last_round(round_: dict[str, Any] | None) -> str:
    if round_ is None:
        return ""
    parts = [f"round {round_['id']}", round_["strategy"], f"budget {round_['budget']}", f"seed {round_['seed']}"]
    options = round_["options"]
    if options.get("mode_field"):
        parts.append(f"mode field {options['mode_field']}")
    if options.get("policy_model"):
        parts.append(f"policy model {options['policy_model']}")
    return " (last: " + ", ".join(parts) + ")"


def position_bias(store: Store) -> dict[str, Any]:
    """Count the decisive votes (a or b) whose chosen response was shown on the left.

    Keys: ``decisive_votes``, ``chosen_shown_left`` and ``chosen_shown_left_rate`` (None without decisive
    votes). The side is randomised per pair, so a rate far from 0.5 over many votes means annotators
    favour one side.
    """
    row = store.execute(
        "SELECT COUNT(*) AS decisive, COALESCE(SUM(outcome = shown_left), 0) AS left_wins "
        "FROM votes WHERE outcome IN ('a', 'b')"
    ).fetchone()
    decisive, left_wins = int(row["decisive"]), int(row["left_wins"])
    return {
        "decisive_votes": decisive,
        "chosen_shown_left": left_wins,
        "chosen_shown_left_rate": round(left_wins / decisive, 6) if decisive else None,
    }


def format_position(position: dict[str, Any]) -> str:
    if not position["decisive_votes"]:
        return "position bias: no decisive votes yet"
    return (
        f"position bias: the chosen response was shown on the left in {position['chosen_shown_left']} of "
        f"{position['decisive_votes']} decisive votes (rate {position['chosen_shown_left_rate']:.3f}; 0.5 means none)"
    )


def labelstudio_status(workspace: Workspace, url: str | None = None) -> dict[str, Any]:
    """Describe the Label Studio server in use and the workspace's project on it.

    Keys: ``url``, ``version``, ``project_id``, ``tasks``, ``annotations`` (None where unknown), ``running``,
    ``local`` and ``error`` (why the server cannot be used, or None). A local server adds ``pid``,
    ``port`` and ``state_dir``. ``position`` is `position_bias` of the workspace, and ``pulled`` counts
    the annotations recorded by the pulls so far by state (vote, invalid, superseded, unknown_task).
    """
    from connectors.labelstudio.server import server_status
    from engine.annotation import URL_ENV, make_client, project_meta_key, resolve_connection
    from engine.errors import PrefscoutError

    status: dict[str, Any] = {key: None for key in LABELSTUDIO_STATUS_KEYS}
    remote = bool(url or os.environ.get(URL_ENV))
    status.update({"running": False, "local": not remote, "error": None, "position": None, "pulled": {}})
    if not remote:
        local = server_status(workspace.labelstudio_dir)
        status.update({key: local[key] for key in ("url", "version", "pid", "port", "state_dir", "error", "running")})

    try:
        connection = resolve_connection(workspace, url)
        client = make_client(connection, workspace.load_config().labelstudio)
        status["url"] = connection.url
        status["version"] = client.check()
        status["running"] = True
    except PrefscoutError as error:
        status["error"] = status["error"] or str(error)
        if not remote:
            status["project_id"] = _stored_project_id(workspace, project_meta_key("local"))
        return _with_store_counts(workspace, status, None)

    store_project = _stored_project_id(workspace, project_meta_key(connection.server_key))
    if store_project is not None:
        try:
            counts = client.counts(store_project)
        except PrefscoutError as error:
            status["error"] = str(error)
        else:
            status.update({"project_id": store_project, "tasks": counts["tasks"], "annotations": counts["annotations"]})
    project_key = f"{connection.server_key}#{store_project}" if store_project is not None else None
    return _with_store_counts(workspace, status, project_key)


def _stored_project_id(workspace: Workspace, meta_key: str) -> int | None:
    if not workspace.exists():
        return None
    with Store(workspace.store_path) as store:
        value = store.get_meta(meta_key)
    return int(value) if value else None


def _with_store_counts(workspace: Workspace, status: dict[str, Any], project_key: str | None) -> dict[str, Any]:
    """Add the workspace's position bias and, for `project_key`, its pulled annotations by state."""
    from engine.annotation import sync_counts

    if not workspace.exists():
        return status
    with Store(workspace.store_path) as store:
        status["position"] = position_bias(store)
        if project_key is not None:
            status["pulled"] = sync_counts(store, project_key)
    return status


def format_labelstudio_status(status: dict[str, Any]) -> list[str]:
    state = "running" if status["running"] else "not running"
    lines = [f"Label Studio ({'local' if status['local'] else 'remote'}): {state} at {status['url'] or '(no URL)'}"]
    if status["version"]:
        lines.append(f"version: {status['version']}")
    if status.get("pid"):
        lines.append(f"pid: {status['pid']} (data in {status['state_dir']})")
    if status["project_id"] is not None:
        lines.append(f"project {status['project_id']}: {status['tasks']} tasks, {status['annotations']} annotations")
    pulled = status["pulled"]
    if pulled:
        lines.append("pulled annotations: " + ", ".join(f"{state} {count}" for state, count in sorted(pulled.items())))
    if status["position"] is not None:
        lines.append(format_position(status["position"]))
    if status["error"]:
        lines.append(f"error: {status['error']}")
    return lines
