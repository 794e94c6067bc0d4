"""Counts of a workspace and the preference model's held-out quality."""

from __future__ import annotations

from typing import Any

from engine.store import Store
from engine.workspace import Workspace


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
        "preference_model": None,
    }
    if status["votes"]:
        status["preference_model"] = _heldout(workspace, store)
    return status


def _heldout(workspace: Workspace, store: Store) -> dict[str, Any] | None:
    from engine.preference import evaluate_heldout
    from engine.rounds import load_corpus, training_votes

    corpus = load_corpus(workspace, store)
    diffs, labels, groups = training_votes(store, corpus)
    if len(labels) == 0:
        return None
    return evaluate_heldout(diffs, labels, groups)


def format_status(status: dict[str, Any]) -> list[str]:
    lines = [
        f"workspace: {status['workspace']}",
        f"prompts: {status['prompts']}",
        f"responses: {status['responses']} ({status['embedded']} embedded with {status['embedding_model']}, "
        f"{status['embedding_truncated']} embedded from head and tail windows only)",
        f"rounds: {status['rounds']}",
        f"pairs selected: {status['pairs_selected']}",
        f"tasks pushed: {status['tasks_pushed']}",
        f"votes: {status['votes']} on {status['pairs_with_votes']} pairs "
        + "(" + ", ".join(f"{key} {value}" for key, value in status["votes_by_outcome"].items()) + ")",
    ]
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
