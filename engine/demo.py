"""`prefscout demo`: the whole loop on the shipped example, through a real Label Studio server.

Start the local server (or use $LABEL_STUDIO_URL), ingest, run rounds, answer the tasks with
simulated annotators, pull the votes and export the training set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from connectors.labelstudio import server as labelstudio_server
from engine.annotation import URL_ENV, open_project, pull_votes, push_pending, resolve_connection
from engine.errors import ConfigError
from engine.export import export_dataset
from engine.ingest import format_report, ingest_file
from engine.rounds import run_round
from engine.simulation import simulate_annotators
from engine.store import Store
from engine.workspace import Workspace

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"


def run_demo(
    workspace: Workspace,
    *,
    outputs: Path | None = None,
    votes: Path | None = None,
    budget: int = 8,
    rounds: int = 2,
    annotators: int = 3,
    stop_server: bool = False,
    seed: int = 0,
) -> Path:
    """Run the demo, print each step and the artefacts, and return the export folder."""
    outputs = outputs or EXAMPLES_DIR / "outputs.jsonl"
    votes = votes or EXAMPLES_DIR / "votes.jsonl"
    for path, option in ((outputs, "--outputs"), (votes, "--votes")):
        if not path.exists():
            raise ConfigError(f"{path} not found; pass {option} FILE")

    workspace.create()
    local = not os.environ.get(URL_ENV)
    if local:
        port = workspace.load_config().labelstudio.port
        info = labelstudio_server.start_server(workspace.labelstudio_dir, port=port)
        print(f"[1] Label Studio running at {info.url}")
    else:
        print(f"[1] using the Label Studio server at {os.environ[URL_ENV]}")

    with Store(workspace.store_path) as store:
        print(f"[2] ingest {outputs}")
        for line in format_report(ingest_file(workspace, store, outputs)):
            print("    " + line)
        connection = resolve_connection(workspace)
        project = open_project(workspace, store, connection)
        for number in range(1, rounds + 1):
            report = run_round(workspace, store, budget=budget, seed=seed + number)
            if report.round_id is None:
                print(f"[{2 + number}] no candidate pairs left in this workspace; no round recorded")
                break
            pushed = push_pending(workspace, store, project)
            simulated = simulate_annotators(store, project, annotators=annotators, votes_path=votes)
            pulled = pull_votes(store, project)
            mode = "with the preference model" if report.model_trained else "cold start: no votes yet, uncertainty from the prior"
            print(
                f"[{2 + number}] round {report.round_id} ({report.strategy}, {mode}): {report.selected} pairs "
                f"selected, {pushed} tasks pushed, {simulated.annotations_created} simulated votes, "
                f"{pulled.added} votes pulled"
            )
        out_dir = workspace.exports_dir / "demo"
        summary = export_dataset(store, out_dir, workspace.load_config().export)

    counts = summary.datasheet["counts"]
    print(f"[{3 + rounds}] export: {counts['rows']} rows ({counts['train_rows']} train, {counts['test_rows']} test)")
    print()
    print("artefacts:")
    print(f"  workspace:         {workspace.root}")
    print(f"  store:             {workspace.store_path}")
    print(f"  FAISS indexes:     {workspace.index_dir}")
    print(f"  training set:      {out_dir / 'train.jsonl'} (and .parquet, test.*)")
    print(f"  other forms:       {out_dir / 'conversational'}, {out_dir / 'kto'}, {out_dir / 'hf'}")
    print(f"  datasheet:         {out_dir / 'datasheet.md'}")
    if local:
        print(f"  Label Studio data: {workspace.labelstudio_dir}")
        print(f"  credentials:       {workspace.labelstudio_dir / 'credentials.json'}")
    print(f"annotators open:     {connection.url}/projects/{project.project_id}/data")
    if local and stop_server:
        labelstudio_server.stop_server(workspace.labelstudio_dir)
        print("Label Studio stopped")
    elif local:
        print(f"Label Studio keeps running; stop it with: {_prefscout_command()} labelstudio stop --workspace {workspace.root}")
    return out_dir


def _prefscout_command() -> str:
    """Return how to call prefscout from a shell: the script beside this Python, when it is there."""
    script = Path(sys.executable).parent / "prefscout"
    return str(script) if script.exists() else "prefscout"
