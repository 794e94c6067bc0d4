"""Benchmark the Label Studio connector: push 10,000 pairs and pull 10,000 votes against a real server.

Usage::

    .venv/bin/python bench/labelstudio_bench.py [--pairs 10000] [--repeats 3] [--port 18650]

It starts its own Label Studio server (a copy of the environment's template, see
``prefscout labelstudio template``) in a temporary folder on 127.0.0.1, stops it at the end, and
prints one Markdown table row per measurement with the median over the repeats. Measured:

- the server's own bulk import of the same tasks: one request, and requests of 1,000 tasks;
- ``push_pending`` from a workspace store into an empty project (batches of 500 and of 1,000), and the
  same push again, when every pair is already on the server;
- ``pull_votes`` of a project whose tasks each carry one annotation (imported with the tasks, the
  fastest way to create them): the first, full pull, then an incremental pull with nothing new.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.labelstudio.client import LabelStudioClient, annotation_for_choice  # noqa: E402
from connectors.labelstudio.server import start_server, stop_server  # noqa: E402
from engine.annotation import PULL_OVERLAP, Project, build_tasks, pull_votes, push_pending  # noqa: E402
from engine.store import Store, make_pair_id, text_hash, utc_now  # noqa: E402
from engine.workspace import LabelStudioSettings, Workspace  # noqa: E402

logger = logging.getLogger("bench.labelstudio")


def seed_store(root: Path, pairs: int) -> tuple[Workspace, Store]:
    """Create a workspace with `pairs` prompts of two responses each (about 1,000 characters per response)."""
    workspace = Workspace(root)
    workspace.create()
    store = Store(workspace.store_path)
    with store.transaction() as db:
        round_id = db.execute(
            "INSERT INTO rounds (strategy, budget, seed, pool_size, votes_at_start, options, created_at) "
            "VALUES ('random', ?, 0, ?, 0, '{}', ?)",
            (pairs, pairs, utc_now()),
        ).lastrowid
        for number in range(pairs):
            prompt = f"Question {number} : explique la photosynthèse en quelques phrases. " * 3
            prompt_row = db.execute(
                "INSERT INTO prompts (prompt_id, text, text_hash) VALUES (?, ?, ?)",
                (f"q{number}", prompt, text_hash(prompt)),
            ).lastrowid
            rows = []
            for side in ("a", "b"):
                text = f"Réponse {side} {number}. " + "La lumière est convertie en énergie chimique. " * 20
                rows.append(
                    db.execute(
                        "INSERT INTO responses (response_id, prompt_row, model, text, text_hash, metadata) "
                        "VALUES (?, ?, ?, ?, ?, '{}')",
                        (f"q{number}-{side}", prompt_row, f"model-{side}", text, text_hash(text)),
                    ).lastrowid
                )
            db.execute(
                "INSERT INTO pairs (pair_id, prompt_row, response_a, response_b, round_id, rank, left_side) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (make_pair_id(f"q{number}-a", f"q{number}-b"), prompt_row, rows[0], rows[1], round_id, number, "ab"[number % 2]),
            )
    return workspace, store


def timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def new_project(client: LabelStudioClient, title: str) -> int:
    return client.ensure_project(None, title=title, maximum_annotations=1)


def run_once(client: LabelStudioClient, url: str, workspace: Workspace, store: Store, repeat: int) -> dict[str, float]:
    pairs = store.pairs()
    ordered = sorted(pairs.values(), key=lambda pair: pair.pair_id)
    tasks = build_tasks(store, ordered)
    body = [{"data": {"pair_id": task.pair_id, "prompt": task.prompt, "left": task.left, "right": task.right}} for task in tasks]
    times: dict[str, float] = {}

    project_id = new_project(client, f"bulk one {repeat}")
    times["server bulk import, 1 request"], _ = timed(
        lambda: client._request("POST", f"/api/projects/{project_id}/import", json=body, retry=False)
    )
    project_id = new_project(client, f"bulk batches {repeat}")
    times["server bulk import, requests of 1,000"], _ = timed(
        lambda: [
            client._request("POST", f"/api/projects/{project_id}/import", json=body[start : start + 1000], retry=False)
            for start in range(0, len(body), 1000)
        ]
    )

    for batch_size in (500, 1000):
        store.execute("UPDATE pairs SET task_id = NULL, project_key = NULL, pushed_at = NULL")
        project_id = new_project(client, f"push {batch_size} {repeat}")
        project = Project(client, project_id, f"{url}#{project_id}", LabelStudioSettings(batch_size=batch_size))
        times[f"prefscout push, batches of {batch_size}"], pushed = timed(lambda: push_pending(workspace, store, project))
        assert pushed == len(tasks), pushed
    store.execute("UPDATE pairs SET task_id = NULL, project_key = NULL, pushed_at = NULL")
    times["prefscout push again, all pairs on the server"], _ = timed(lambda: push_pending(workspace, store, project))
    assert client.counts(project_id)["tasks"] == len(tasks)

    # Votes: the same tasks imported with one annotation each by one annotator.
    annotator = client.users()
    annotator_id = next(iter(annotator))
    choices = ["left", "right", "tie", "both_bad", "skip"]
    annotated = []
    for index, item in enumerate(body):
        result, cancelled = annotation_for_choice(choices[index % len(choices)])  # type: ignore[arg-type]
        annotated.append({**item, "annotations": [{"result": result, "was_cancelled": cancelled, "completed_by": annotator_id}]})
    project_id = new_project(client, f"pull {repeat}")
    for start in range(0, len(annotated), 1000):
        client._request("POST", f"/api/projects/{project_id}/import", json=annotated[start : start + 1000], retry=False)
    store.execute("DELETE FROM votes")
    project = Project(client, project_id, f"{url}#{project_id}", LabelStudioSettings())
    # Every pull reads again the tasks changed shortly before the previous pull started. Waiting past
    # that overlap keeps the import out of the incremental pull below.
    time.sleep(PULL_OVERLAP.total_seconds() + 1)
    times["prefscout pull, first (full)"], report = timed(lambda: pull_votes(store, project))
    assert report.added == len(tasks), report
    assert store.count("SELECT COUNT(*) FROM votes") == len(tasks)
    times["prefscout pull again, incremental, nothing new"], report = timed(lambda: pull_votes(store, project))
    assert report.added == 0, report
    assert report.removed == 0, report
    logger.warning("incremental pull read %d tasks (%d recounted)", report.tasks_read, report.recounted_tasks)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=10_000, help="pairs pushed and votes pulled (default: 10000)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions; the table shows the median (default: 3)")
    parser.add_argument("--port", type=int, default=18650, help="first port tried for the server (default: 18650)")
    parser.add_argument("--json", type=Path, help="also write every measurement to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="prefscout-bench-") as folder:
        root = Path(folder)
        info = start_server(root / "labelstudio", port=args.port)
        try:
            client = LabelStudioClient(info.url, info.api_key)
            workspace, store = seed_store(root / "ws", args.pairs)
            runs = [run_once(client, info.url, workspace, store, repeat) for repeat in range(args.repeats)]
            store.close()
        finally:
            stop_server(root / "labelstudio")

    print(f"{args.pairs:,} pairs, {args.repeats} repeats, {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print("| measurement | median (s) | all runs (s) |")
    print("|---|---:|---|")
    for name in runs[0]:
        values = [run[name] for run in runs]
        print(f"| {name} | {statistics.median(values):.1f} | {', '.join(f'{value:.1f}' for value in values)} |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
