"""Initialised Label Studio data dirs ("templates") that new state dirs copy, so a first start takes seconds.

``label-studio init`` applies about 240 migrations (50-70 s on 2 cores with label-studio 1.23.2); copying
an initialised data dir (1.4 MB) takes milliseconds. A copy would share the template's admin password,
API token, organisation invite token and Django ``SECRET_KEY``, so `copy_template` replaces all four in
the copied SQLite database before the server first starts. Every state dir therefore has its own.

The environment template lives inside the Python environment that runs prefscout (the virtual
environment), under ``share/prefscout/``, one per Label Studio version. ``make venv`` builds it with
``prefscout labelstudio template``; nothing outside a workspace is written when starting a server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import shutil
import sqlite3
import string
import sys
from contextlib import closing
from importlib import metadata
from pathlib import Path

from engine.errors import LabelStudioError

logger = logging.getLogger(__name__)

DATA_DIR = "data"
CREDENTIALS_FILE = "credentials.json"
DATABASE_FILE = "label_studio.sqlite3"

_ALPHANUMERIC = string.ascii_letters + string.digits
# Django's default for PBKDF2-SHA256 in Django 5.2; a hash with other iterations is still accepted.
_DEFAULT_PASSWORD_ITERATIONS = 1_000_000


def environment_template_dir() -> Path:
    """Return where this environment keeps its template for the installed Label Studio version."""
    try:
        version = metadata.version("label-studio")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return Path(sys.prefix) / "share" / "prefscout" / f"labelstudio-template-{version}"


def is_initialised(state_dir: Path) -> bool:
    """Return True if `state_dir` has credentials and a Label Studio database."""
    return (state_dir / CREDENTIALS_FILE).is_file() and (state_dir / DATA_DIR / DATABASE_FILE).is_file()


def new_credentials() -> dict[str, str]:
    """Generate an admin email, password, legacy API token and Django SECRET_KEY."""
    return {
        "email": f"admin-{secrets.token_hex(4)}@prefscout.local",
        "password": secrets.token_urlsafe(24),
        # Django REST framework tokens are at most 40 characters.
        "api_key": secrets.token_hex(20),
        # A key starting with "$" breaks Label Studio 1.23.2, so keep it alphanumeric.
        "secret_key": "".join(secrets.choice(_ALPHANUMERIC) for _ in range(50)),
    }


def copy_template(template_dir: Path, state_dir: Path) -> dict[str, str]:
    """Copy an initialised state dir's data into `state_dir` with new credentials; return them.

    Raises LabelStudioError when `template_dir` is not initialised, or when its database lacks the
    tables of label-studio 1.23.2 that this function updates. Rebuilding the template fixes the latter.
    """
    template_dir = Path(template_dir).resolve()
    template_credentials = read_json(template_dir / CREDENTIALS_FILE)
    if template_credentials is None or not is_initialised(template_dir):
        raise LabelStudioError(
            f"Label Studio template {template_dir} is not an initialised state dir (expected "
            f"{CREDENTIALS_FILE} and {DATA_DIR}/{DATABASE_FILE}); build one with `prefscout labelstudio template`"
        )

    target = state_dir / DATA_DIR
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(template_dir / DATA_DIR, target)
    credentials = new_credentials()
    _replace_credentials(target / DATABASE_FILE, template_credentials, credentials)
    write_json(state_dir / CREDENTIALS_FILE, credentials, mode=0o600)
    logger.info("Copied Label Studio template %s into %s with new credentials", template_dir, state_dir)
    return credentials


def _replace_credentials(database: Path, old: dict[str, str], new: dict[str, str]) -> None:
    """Give the copied admin user a new token, email and password, and the organisation a new invite token."""
    try:
        with closing(sqlite3.connect(database)) as connection, connection:
            row = connection.execute("SELECT user_id FROM authtoken_token WHERE key = ?", (old["api_key"],)).fetchone()
            if row is None:
                raise LabelStudioError(
                    f"the admin token of {CREDENTIALS_FILE} is not in {database}; rebuild the template"
                )
            user_id = row[0]
            (stored_hash,) = connection.execute("SELECT password FROM htx_user WHERE id = ?", (user_id,)).fetchone()
            password_hash = _django_password_hash(new["password"], _iterations_of(stored_hash))

            connection.execute("UPDATE authtoken_token SET key = ? WHERE user_id = ?", (new["api_key"], user_id))
            connection.execute(
                "UPDATE htx_user SET email = ?, password = ? WHERE id = ?", (new["email"], password_hash, user_id)
            )
            connection.execute("UPDATE organization SET token = ?", (secrets.token_hex(20),))
            connection.execute("DELETE FROM django_session")
    except sqlite3.Error as error:
        raise LabelStudioError(
            f"cannot set new credentials in the copied Label Studio database {database}: {error}; "
            "the template may come from another Label Studio version, so rebuild it"
        ) from error


def _iterations_of(password_hash: str) -> int:
    algorithm, _, rest = password_hash.partition("$")
    iterations = rest.partition("$")[0]
    if algorithm == "pbkdf2_sha256" and iterations.isdigit():
        return int(iterations)
    return _DEFAULT_PASSWORD_ITERATIONS


def _django_password_hash(password: str, iterations: int) -> str:
    """Hash `password` in Django's ``pbkdf2_sha256$iterations$salt$base64(digest)`` format."""
    salt = "".join(secrets.choice(_ALPHANUMERIC) for _ in range(22))
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt.encode("ascii"), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(digest).decode('ascii')}"


def read_json(path: Path) -> dict | None:
    """Return the JSON object in `path`, or None when the file does not exist."""
    try:
        with open(path, encoding="utf-8") as file:
            content = json.load(file)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise LabelStudioError(f"cannot read {path}: {error}; fix or delete the file") from error
    return content if isinstance(content, dict) else None


def write_json(path: Path, content: dict, *, mode: int) -> None:
    """Write `content` atomically, creating the file with `mode` so a secret is never world-readable."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        json.dump(content, file, indent=2)
        file.write("\n")
    os.chmod(temporary, mode)
    os.replace(temporary, path)
