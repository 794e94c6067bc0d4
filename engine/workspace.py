"""The workspace: one folder holding everything prefscout stores for a collection.

Layout::

    <workspace>/config.json            settings (embedding model, round and export defaults)
    <workspace>/prefscout.sqlite3      the store: prompts, responses, embedding cache, rounds, pairs, votes
    <workspace>/index/responses.faiss  FAISS index of response embeddings, keyed by response row id
    <workspace>/index/prompts.faiss    FAISS index of prompt embeddings, keyed by prompt row id
    <workspace>/labelstudio/           the local Label Studio server's data dir, credentials and log
    <workspace>/exports/               exports written without `--out`
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

WORKSPACE_ENV = "PREFSCOUT_WORKSPACE"
DEFAULT_WORKSPACE = "prefscout-workspace"


@dataclass
class EmbeddingSettings:
    model: str | None = None  # None: the default model (all-MiniLM-L6-v2, shipped offline)
    truncate: bool = False  # embed only the first window of a long response
    max_windows: int = 64  # windows embedded per response before head and tail are kept


@dataclass
class RoundSettings:
    strategy: str = "hybrid"
    max_pairs_per_prompt: int = 2  # pairs of one prompt in one round's batch
    mode_field: str | None = None  # response metadata field naming a response's answer, or None for embedding clusters
    mode_threshold: float = 0.9  # cosine similarity joining two responses in one cluster mode (without mode_field)
    generator_feature: bool = False  # add a one-hot of the generator model to the preference model's features
    # hybrid: share of each batch chosen by novelty; stochastic: weight of novelty; in [0, 1].
    # None: 0.5 with a mode_field (answers), 0.1 without (embedding clusters).
    novelty_weight: float | None = None
    optimism: bool = True  # hybrid and stochastic: weight novelty by the rank of the optimistic reward
    policy_model: str | None = None  # causal LM (Hub id or folder) whose log-probabilities scale novelty, or None
    policy_batch_size: int = 8  # responses per forward pass of the policy model
    policy_max_length: int = 1024  # tokens of prompt and response scored together; the prompt is cut first


@dataclass
class LabelStudioSettings:
    port: int = 8080  # first port tried by `prefscout labelstudio start`
    project_title: str = "prefscout pairwise preferences"
    maximum_annotations: int = 3  # annotators asked per task
    batch_size: int = 1000  # maximum tasks per import request (requests also stay under 16 MiB)
    instructions: str = (
        "Read the prompt, then both responses. Pick the better response, or choose Tie when they are "
        "equally good and Both bad when neither is acceptable. Judge correctness first, then "
        "helpfulness and clarity. Skip a task you cannot judge."
    )  # shown above every task; empty for none
    max_display_chars: int = 100_000  # longer texts are cut with a visible marker in the task; 0: never cut
    timeout_seconds: float = 60.0  # per HTTP request to Label Studio
    retries: int = 4  # extra attempts after a timeout, lost connection or 5xx status
    backoff_seconds: float = 1.0  # wait before the first retry, doubled before each next one


@dataclass
class ExportSettings:
    max_pairs_per_prompt: int = 4  # cap that keeps prompts with many pairs from dominating
    test_fraction: float = 0.1  # share of prompts put in the test split
    min_votes: int = 1  # non-skip votes a pair needs
    min_agreement: float = 0.5  # share of votes the majority outcome needs (strictly more than half)
    seed: int = 0
    max_rows_per_cluster: int = 0  # cap on rows per prompt cluster; 0 means no cap
    prompt_clusters: int = 0  # k of the k-means over prompt embeddings; 0 picks sqrt(prompts / 2)
    mode_field: str = "answer_key"  # response metadata field that names a response's answer (its mode)
    mode_distance: float = 0.25  # cosine distance within which responses share a mode, without mode_field
    rare_mode_share: float = 0.25  # a mode is rare when at most this share of its prompt's responses have it
    weighting: str = "balanced"  # `weight` column: balanced, propensity or none
    inverse_propensity: bool = True  # with balanced weights, weight rows of a mode by 1 / propensity
    max_weight: float = 10.0  # weights are clipped here, then rescaled to mean 1


@dataclass
class Config:
    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    round: RoundSettings = field(default_factory=RoundSettings)
    labelstudio: LabelStudioSettings = field(default_factory=LabelStudioSettings)
    export: ExportSettings = field(default_factory=ExportSettings)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path) -> Config:
        """Build a config from parsed JSON, rejecting unknown sections and keys."""
        config = cls()
        for section_name, values in data.items():
            if section_name not in _SECTION_NAMES:
                raise ConfigError(
                    f"{source}: unknown section {section_name!r}; "
                    f"known sections: {', '.join(_SECTION_NAMES)}"
                )
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: section {section_name!r} must be a JSON object")
            section = getattr(config, section_name)
            known = {f.name: f for f in fields(section)}
            for key, value in values.items():
                if key not in known:
                    raise ConfigError(
                        f"{source}: unknown key {section_name}.{key}; "
                        f"known keys: {', '.join(known)}"
                    )
                _check_value_type(source, f"{section_name}.{key}", known[key].type, value)
                setattr(section, key, value)
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SECTION_NAMES = tuple(f.name for f in fields(Config))

# JSON value types accepted for each annotation of a settings field. An int is accepted where a
# float is expected, and a bool (a subclass of int in Python) only where a bool is.
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "None": (type(None),),
}
_JSON_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "None": "null"}


def _check_value_type(source: Path, key: str, annotation: object, value: object) -> None:
    """Raise ConfigError when a config value does not have the JSON type its field declares."""
    names = [name.strip() for name in str(annotation).split("|")]
    if any(name not in _JSON_TYPES for name in names):
        return
    for name in names:
        if isinstance(value, bool) and name != "bool":
            continue
        if isinstance(value, _JSON_TYPES[name]):
            return
    expected = " or ".join(_JSON_NAMES[name] for name in names)
    raise ConfigError(f"{source}: {key} is {json.dumps(value)}, expected {expected}; fix the value in that file")


class Workspace:
    """Paths and configuration of one workspace folder."""

    def __init__(self, root: Path):
        self.root = root

    @classmethod
    def resolve(cls, path: str | os.PathLike[str] | None) -> Workspace:
        """Pick the workspace: `path`, else $PREFSCOUT_WORKSPACE, else ./prefscout-workspace."""
        chosen = path or os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE
        return cls(Path(chosen).expanduser().resolve())

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def store_path(self) -> Path:
        return self.root / "prefscout.sqlite3"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def labelstudio_dir(self) -> Path:
        return self.root / "labelstudio"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    def exists(self) -> bool:
        return self.store_path.exists() or self.config_path.exists()

    def create(self) -> None:
        """Create the folder and a default config.json; existing files are kept."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            self.save_config(Config())

    def load_config(self) -> Config:
        if not self.config_path.exists():
            return Config()
        try:
            data = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(
                f"{self.config_path}: invalid JSON ({error}); fix the file or delete it to "
                "return to the defaults"
            ) from error
        if not isinstance(data, dict):
            raise ConfigError(f"{self.config_path}: expected a JSON object at the top level")
        return Config.from_dict(data, self.config_path)

    def save_config(self, config: Config) -> None:
        write_text_atomic(self.config_path, json.dumps(config.to_dict(), indent=2) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
