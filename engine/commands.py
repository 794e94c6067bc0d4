"""One function per CLI command: parse nothing, call the engine, print the outcome."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from engine.cli import print_json
from engine.errors import ConfigError, LabelStudioError, PrefscoutError
from engine.records import FieldMap
from engine.store import Store
from engine.workspace import Workspace


def open_store(workspace: Workspace, *, create: bool = False) -> Store:
    if create:
        workspace.create()
    elif not workspace.exists():
        raise ConfigError(
            f"no workspace at {workspace.root}; run `prefscout ingest FILE` first, or pass "
            "--workspace DIR (or set PREFSCOUT_WORKSPACE) to use another one"
        )
    return Store(workspace.store_path)


def require_folder_path(path: Path) -> None:
    """Reject an output path that exists and is not a folder, before any work starts."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is an existing file; give a folder path (it is created if missing)")


def run_ingest(workspace: Workspace, args: argparse.Namespace) -> int:
    from engine.ingest import format_report, ingest_file

    fields = FieldMap(
        prompt=args.prompt_field,
        response=args.response_field,
        model=args.model_field,
        prompt_id=args.prompt_id_field,
        response_id=args.response_id_field,
    )
    with open_store(workspace, create=True) as store:
        report = ingest_file(
            workspace, store, args.file, fields=fields, model=args.model, truncate=args.truncate, strict=args.strict
        )
        # The store records the embedding model only after a successful embedding. The config copies
        # it from there, so a model that failed to load is never written anywhere.
        config = workspace.load_config()
        recorded_model = store.get_meta("embedding_model")
        if recorded_model is not None and config.embedding.model != recorded_model:
            config.embedding.model = recorded_model
            config.embedding.truncate = store.get_meta("embedding_mode") == "truncate"
            workspace.save_config(config)
    for line in format_report(report):
        print(line)
    return 0


def run_round(workspace: Workspace, args: argparse.Namespace) -> int:
    from engine.rounds import run_round as select_round

    overrides = {
        name: getattr(args, name)
        for name in (
            "mode_field", "generator_feature", "novelty_weight", "optimism",
            "policy_model", "policy_batch_size", "policy_max_length",
        )
        if getattr(args, name) is not None
    }
    settings = dataclasses.replace(workspace.load_config().round, **overrides)
    with open_store(workspace) as store:
        report = select_round(
            workspace,
            store,
            budget=args.budget,
            strategy=args.strategy,
            seed=args.seed,
            candidates=args.candidates,
            settings=settings,
        )
        for problem in report.candidate_problems[:20]:
            print(f"warning: {problem}", file=sys.stderr)
        if len(report.candidate_problems) > 20:
            print(f"warning: ... and {len(report.candidate_problems) - 20} more candidate rows skipped", file=sys.stderr)
        if report.round_id is None:
            print(
                "no candidate pairs left: every pair of two different responses to one prompt has been "
                "selected already (or --candidates names none that are new); ingest more outputs"
            )
            return 0
        model_note = (
            f"preference model trained on {report.decisive_votes} decisive votes"
            if report.model_trained
            else "no preference model yet: too few decisive votes"
        )
        print(
            f"round {report.round_id}: {report.strategy} selected {report.selected} of {report.pool_size} "
            f"candidate pairs (seed {report.seed}; {model_note})"
        )
        if report.policy_model is not None:
            print(
                f"policy log-probabilities under {settings.policy_model}: {report.policy_computed} computed, "
                f"{report.policy_cached} read from the workspace cache"
            )
        if args.no_push:
            print("not pushed (--no-push); run `prefscout push` to create the tasks")
            return 0
        try:
            pushed = _push(workspace, store, args.url)
        except PrefscoutError as error:
            raise LabelStudioError(f"round {report.round_id} is recorded, but pushing failed: {error}; "
                                   "run `prefscout push` once the server is reachable") from error
    print(f"pushed {pushed} new tasks")
    return 0


def _push(workspace: Workspace, store: Store, url: str | None, batch_size: int | None = None) -> int:
    from engine.annotation import open_project, push_pending, resolve_connection

    project = open_project(workspace, store, resolve_connection(workspace, url))
    return push_pending(workspace, store, project, batch_size=batch_size)


def run_push(workspace: Workspace, args: argparse.Namespace) -> int:
    with open_store(workspace) as store:
        pushed = _push(workspace, store, args.url, args.batch_size)
    print(f"pushed {pushed} new tasks")
    return 0


def run_pull(workspace: Workspace, args: argparse.Namespace) -> int:
    from engine.annotation import open_project, pull_votes, resolve_connection

    with open_store(workspace) as store:
        project = open_project(workspace, store, resolve_connection(workspace, args.url))
        report = pull_votes(store, project, full=args.full)
    print(
        f"{report.mode} pull, {report.tasks_read} tasks read; votes: {report.added} added, {report.updated} "
        f"updated, {report.removed} removed, {report.unchanged} unchanged"
    )
    if report.superseded:
        print(f"{report.superseded} earlier annotations replaced by a later one of the same annotator on the same task")
    if report.invalid:
        print(f"warning: {len(report.invalid)} annotations have results the labelling config cannot produce", file=sys.stderr)
    if report.unknown_tasks:
        print(f"warning: {report.unknown_tasks} annotations belong to tasks prefscout did not create", file=sys.stderr)
    for message in report.invalid[:20]:
        print(f"warning: invalid annotation not stored: {message}", file=sys.stderr)
    return 0


def run_export(workspace: Workspace, args: argparse.Namespace) -> int:
    from engine.export import export_dataset

    options = workspace.load_config().export
    overrides = {
        "max_pairs_per_prompt": args.max_pairs_per_prompt,
        "min_votes": args.min_votes,
        "min_agreement": args.min_agreement,
        "test_fraction": args.test_fraction,
        "seed": args.seed,
        "max_rows_per_cluster": args.max_rows_per_cluster,
        "prompt_clusters": args.prompt_clusters,
        "mode_field": args.mode_field,
        "rare_mode_share": args.rare_mode_share,
        "weighting": args.weighting,
        "inverse_propensity": args.inverse_propensity,
        "max_weight": args.max_weight,
    }
    options = dataclasses.replace(options, **{key: value for key, value in overrides.items() if value is not None})
    out_dir = args.out or workspace.exports_dir / "latest"
    require_folder_path(out_dir)
    with open_store(workspace) as store:
        summary = export_dataset(store, out_dir, options)
    counts = summary.datasheet["counts"]
    print(
        f"exported {counts['rows']} rows ({counts['train_rows']} train, {counts['test_rows']} test) "
        f"from {counts['pairs_with_votes']} voted pairs to {out_dir}, and {counts['kto_rows']} KTO rows"
    )
    for path in summary.files:
        print(f"  {path}")
    if counts["pairs_with_votes"] == 0:
        print("warning: the store has no votes yet, so the export is empty; run `prefscout pull` first", file=sys.stderr)
    mode_methods = summary.datasheet["balance"]["strata"]["prompts_by_mode_method"]
    if args.mode_field and counts["pairs_with_votes"] and "field" not in mode_methods:
        print(
            f"warning: no exported response has the field {args.mode_field!r}, so modes come from "
            "embedding clusters; check the name against your input file's columns",
            file=sys.stderr,
        )
    return 0


def run_simulate_annotators(workspace: Workspace, args: argparse.Namespace) -> int:
    from engine.annotation import open_project, resolve_connection
    from engine.simulation import simulate_annotators

    with open_store(workspace) as store:
        project = open_project(workspace, store, resolve_connection(workspace, args.url))
        report = simulate_annotators(
            store, project, annotators=args.annotators, votes_path=args.votes, oracle=args.oracle
        )
    print(
        f"{report.annotations_created} annotations created on {report.answered_tasks} of "
        f"{report.open_tasks} open tasks; {report.left_open} left open (no recorded answer)"
    )
    for problem in report.problems[:20]:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


def run_simulate(workspace: Workspace, args: argparse.Namespace) -> int:
    from engine.simulator_run import run_from_arguments

    require_folder_path(args.out)
    summary_path = run_from_arguments(args)
    print(f"simulation written to {summary_path.parent} (summary.json, rounds.csv, learning_curves.png)")
    return 0


def run_status(workspace: Workspace, args: argparse.Namespace) -> int:
    from engine.status import format_status, workspace_status

    with open_store(workspace) as store:
        status = workspace_status(workspace, store)
    if args.json:
        print_json(status)
    else:
        for line in format_status(status):
            print(line)
    return 0


def run_labelstudio(workspace: Workspace, args: argparse.Namespace) -> int:
    from connectors.labelstudio.server import build_environment_template, start_server, stop_server
    from engine.status import format_labelstudio_status, labelstudio_status

    state_dir = workspace.labelstudio_dir
    if args.action == "start":
        workspace.create()
        port = args.port or workspace.load_config().labelstudio.port
        info = start_server(state_dir, port=port)
        if info.requested_port is not None:
            print(f"port {info.requested_port} is busy, so Label Studio uses the next free one")
        print(f"Label Studio is running at {info.url} (data in {state_dir})")
        print(f"credentials: {state_dir / 'credentials.json'}")
    elif args.action == "stop":
        stopped = stop_server(state_dir)
        print("Label Studio stopped" if stopped else "no Label Studio server was running for this workspace")
    elif args.action == "template":
        print(f"Label Studio template ready in {build_environment_template()}")
    else:
        status = labelstudio_status(workspace, args.url)
        if args.json:
            print_json(status)
        else:
            for line in format_labelstudio_status(status):
                print(line)
        return 0 if status["running"] else 1
    return 0


def run_demo(workspace: Workspace, args: argparse.Namespace) -> int:
    from engine.demo import run_demo as demo

    demo(
        workspace,
        outputs=args.outputs,
        votes=args.votes,
        budget=args.budget,
        rounds=args.rounds,
        annotators=args.annotators,
        stop_server=args.stop_server,
    )
    return 0
