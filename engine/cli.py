"""The `prefscout` command line.

Exit status: 0 on success, 1 when a command fails with a message (a `PrefscoutError`), 2 for
invalid usage. `--debug` shows the traceback of a failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from engine.errors import PrefscoutError
from engine.workspace import DEFAULT_WORKSPACE, WORKSPACE_ENV, Workspace

logger = logging.getLogger("prefscout")

EPILOG = """examples:
  prefscout labelstudio start
  prefscout ingest outputs.jsonl
  prefscout round --budget 50
  prefscout pull
  prefscout export --out dataset/
  prefscout demo
"""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--workspace",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help=f"workspace folder (default: ${WORKSPACE_ENV}, else ./{DEFAULT_WORKSPACE})",
    )
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log progress at INFO level")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="log at DEBUG level and show tracebacks")

    parser = argparse.ArgumentParser(
        prog="prefscout",
        description="Active-learning annotation engine for pairwise LLM preference data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = commands.add_parser("ingest", parents=[common], help="store, embed and index model outputs")
    ingest.add_argument("file", type=Path, help="JSON Lines (.jsonl, .jsonl.gz), Parquet or CSV file of outputs")
    ingest.add_argument("--prompt-field", default="prompt", help="column with the prompt text (default: prompt)")
    ingest.add_argument("--response-field", default="response", help="column with the response text (default: response)")
    ingest.add_argument("--model-field", default="model", help="column with the generator model's name (default: model)")
    ingest.add_argument("--prompt-id-field", default="prompt_id", help="column with the prompt id; derived from the text when absent")
    ingest.add_argument("--response-id-field", default="response_id", help="column with the response id; derived from the text when absent")
    ingest.add_argument("--model", help="sentence-transformers model name or folder (default: all-MiniLM-L6-v2, shipped offline); fixed per workspace")
    ingest.add_argument("--truncate", action="store_true", help="embed only the first window of long responses instead of the whole text (first ingest only)")
    ingest.add_argument("--strict", action="store_true", help="store nothing when any row is invalid (default: skip invalid rows and report them)")

    round_ = commands.add_parser("round", parents=[common], help="select pairs for annotation and push them to Label Studio")
    round_.add_argument("--budget", type=int, required=True, help="number of pairs to select")
    round_.add_argument(
        "--strategy",
        help="acquisition strategy: hybrid (default), novelty, uncertainty, random or stochastic "
        "(samples in proportion to exp(score / temperature) and records propensities)",
    )
    round_.add_argument("--seed", type=int, help="random seed (default: drawn and recorded with the round)")
    round_.add_argument("--candidates", type=Path, help="votes-style file (response_a_id, response_b_id) restricting the candidate pool")
    round_.add_argument("--mode-field", help="response metadata field naming a response's answer, its mode, for example answer_key (default from config: none, embedding clusters)")
    round_.add_argument("--generator-feature", action="store_true", default=None, help="add a one-hot of the generator model to the preference model's features (default from config: off)")
    round_.add_argument("--novelty-weight", type=float, help="hybrid: share of each batch chosen by novelty; stochastic: weight of novelty against uncertainty; 0-1 (default from config: 0.5 with --mode-field, else 0.1)")
    round_.add_argument("--no-optimism", dest="optimism", action="store_false", default=None, help="hybrid and stochastic: do not weight novelty by the model's optimistic reward rank (default from config: weight it)")
    round_.add_argument("--policy-model", metavar="NAME", help="causal language model (Hugging Face Hub id or local folder) under which rarely sampled responses count as more novel; each response's mean token log-probability is computed once and cached in the workspace (default from config: none)")
    round_.add_argument("--policy-batch-size", type=int, metavar="N", help="responses per forward pass of the policy model (default from config: 8)")
    round_.add_argument("--policy-max-length", type=int, metavar="N", help="tokens of prompt and response scored together; the prompt is cut from its start first (default from config: 1024)")
    round_.add_argument("--no-push", action="store_true", help="record the round without pushing tasks")
    round_.add_argument("--url", help="remote Label Studio URL (default: $LABEL_STUDIO_URL, else the workspace's local server)")

    push = commands.add_parser("push", parents=[common], help="push selected pairs that have no task yet")
    push.add_argument("--url", help="remote Label Studio URL (default: $LABEL_STUDIO_URL, else the local server)")
    push.add_argument("--batch-size", type=int, help="maximum tasks per import request (default from config: 1000)")

    pull = commands.add_parser("pull", parents=[common], help="read new, changed and deleted annotations back as votes")
    pull.add_argument("--url", help="remote Label Studio URL (default: $LABEL_STUDIO_URL, else the local server)")
    pull.add_argument("--full", action="store_true", help="read every annotated task, not only those changed since the last pull")

    export = commands.add_parser("export", parents=[common], help="write the balanced DPO training set and its datasheet")
    export.add_argument("--out", type=Path, help="output folder (default: <workspace>/exports/latest)")
    export.add_argument("--max-pairs-per-prompt", type=int, help="cap on rows per prompt (default from config: 4)")
    export.add_argument("--min-votes", type=int, help="non-skip votes a pair needs (default from config: 1)")
    export.add_argument("--min-agreement", type=float, help="share of votes the majority needs, 0-1 (default from config: 0.5)")
    export.add_argument("--test-fraction", type=float, help="share of prompts in the test split (default from config: 0.1)")
    export.add_argument("--seed", type=int, help="seed of the train/test split and the cap's order (default from config: 0)")
    export.add_argument("--max-rows-per-cluster", type=int, help="cap on rows per prompt cluster, 0 for none (default from config: 0)")
    export.add_argument("--prompt-clusters", type=int, help="k of the k-means over prompt embeddings, 0 for sqrt(prompts / 2) (default from config: 0)")
    export.add_argument("--mode-field", help="response metadata field naming a response's answer, its mode (default from config: answer_key)")
    export.add_argument("--rare-mode-share", type=float, help="a mode is rare when at most this share of its prompt's responses have it (default from config: 0.25)")
    export.add_argument("--weighting", choices=["balanced", "propensity", "none"], help="how the `weight` column is set (default from config: balanced)")
    export.add_argument("--no-inverse-propensity", dest="inverse_propensity", action="store_false", default=None, help="do not weight rows by 1 / selection propensity")
    export.add_argument("--max-weight", type=float, help="largest row weight; weights have mean 1 (default from config: 10)")

    simulate = commands.add_parser(
        "simulate-annotators", parents=[common], help="answer open tasks as simulated annotators (demos, tests)"
    )
    simulate.add_argument("--votes", type=Path, help="recorded votes (response_a_id, response_b_id, votes or winner)")
    simulate.add_argument("--oracle", choices=["correctness"], help="prefer the response whose `correct` field is true")
    simulate.add_argument("--annotators", type=int, default=3, help="number of annotator users (default: 3)")
    simulate.add_argument("--url", help="remote Label Studio URL (default: $LABEL_STUDIO_URL, else the local server)")

    offline = commands.add_parser(
        "simulate",
        parents=[common],
        help="compare acquisition strategies offline against an oracle annotator (no Label Studio)",
        epilog="example:\n  prefscout simulate --outputs mtbench_outputs.jsonl --oracle bt-synthetic "
        "--strategies hybrid,random --budget 25 --rounds 20 --seeds 10 --out sim/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    offline.add_argument("--outputs", type=Path, required=True, help="model outputs file (the same formats as ingest)")
    offline.add_argument("--oracle", required=True, help="votes:FILE (recorded votes, one drawn per request), correctness (the `correct` field) or bt-synthetic")
    offline.add_argument("--strategies", default="hybrid,random", help="comma-separated strategy names (default: hybrid,random)")
    offline.add_argument("--budget", type=int, required=True, help="pairs selected per round")
    offline.add_argument("--rounds", type=int, required=True, help="rounds per seed")
    offline.add_argument("--seeds", type=int, default=10, help="seeds, each with its own held-out split (default: 10)")
    offline.add_argument("--first-seed", type=int, default=0, help="first seed (default: 0)")
    offline.add_argument("--out", type=Path, required=True, help="folder for rounds.csv, summary.json, run.json and learning_curves.png")
    offline.add_argument("--mode-field", help="answer field that defines a response's mode (for example answer_key); default: embedding clusters")
    offline.add_argument("--mode-threshold", type=float, help="cosine similarity that joins two responses in one cluster mode (default: 0.9)")
    offline.add_argument("--generator-feature", action="store_true", help="add a one-hot of the generator model to the preference model's features")
    offline.add_argument("--heldout-fraction", type=float, default=0.2, help="share of prompts held out of the pool for evaluation (default: 0.2)")
    offline.add_argument("--members", type=int, default=8, help="preference model ensemble size (default: 8)")
    offline.add_argument("--l2", type=float, default=1.0, help="L2 penalty of the preference model (default: 1.0)")
    offline.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="strategy option for the strategies that take it, for example max_per_prompt=1 (repeatable)")
    offline.add_argument("--embedding-cache", type=Path, help="embedding cache file, .npz (default: OUT/embeddings.npz)")
    offline.add_argument("--policy-model", metavar="NAME", help="causal language model (Hugging Face Hub id or local folder) under which rarely sampled responses count as more novel; scored once per corpus")
    offline.add_argument("--policy-cache", type=Path, metavar="FILE", help="cache of the policy log-probabilities, .npz (default: OUT/policy_logprobs.npz)")
    offline.add_argument("--tail-chars", type=int, help="embed only the last N characters of each response (where a final answer sits)")
    offline.add_argument("--truncate", action="store_true", help="embed only the first 256-token window of each response")
    offline.add_argument("--sharpness", type=float, help="bt-synthetic: standard deviation of latent reward differences, in logits (default: 3)")
    offline.add_argument("--oracle-seed", type=int, default=0, help="bt-synthetic: seed of the latent reward direction (default: 0)")

    status = commands.add_parser("status", parents=[common], help="counts of the workspace and the preference model's accuracy")
    status.add_argument("--json", action="store_true", help="print JSON")

    labelstudio = commands.add_parser(
        "labelstudio",
        parents=[common],
        help="manage the workspace's local Label Studio server",
        description="start, stop: the workspace's local server. status: the server in use (local, or --url / "
        "$LABEL_STUDIO_URL) and the workspace's project on it. template: build this environment's "
        "initialised Label Studio data dir, which makes a first start take seconds instead of a minute.",
    )
    labelstudio.add_argument("action", choices=["start", "stop", "status", "template"])
    labelstudio.add_argument("--port", type=int, help="first port to try (default from config: 8080; the next free one is used)")
    labelstudio.add_argument("--url", help="status of a remote Label Studio URL (default: $LABEL_STUDIO_URL, else the local server)")
    labelstudio.add_argument("--json", action="store_true", help="print status as JSON (keys include url, version, project_id, tasks, annotations)")

    demo = commands.add_parser("demo", parents=[common], help="run the whole loop on the shipped example")
    demo.add_argument("--outputs", type=Path, help="outputs file (default: examples/outputs.jsonl)")
    demo.add_argument("--votes", type=Path, help="recorded votes for the simulated annotators (default: examples/votes.jsonl)")
    demo.add_argument("--budget", type=int, default=8, help="pairs per round (default: 8)")
    demo.add_argument("--rounds", type=int, default=2, help="rounds (default: 2)")
    demo.add_argument("--annotators", type=int, default=3, help="simulated annotators (default: 3)")
    demo.add_argument("--stop-server", action="store_true", help="stop the local Label Studio server at the end")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    level = logging.WARNING
    if debug:
        level = logging.DEBUG
    elif getattr(args, "verbose", False):
        level = logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    workspace = Workspace.resolve(getattr(args, "workspace", None))

    from engine import commands

    handler = getattr(commands, "run_" + args.command.replace("-", "_"))
    try:
        return handler(workspace, args) or 0
    except PrefscoutError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; what was stored before this command is unchanged", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout (`| head`, say) went away: stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    sys.exit(main())
