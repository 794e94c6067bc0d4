"""Hostile and non-ASCII texts through the whole loop: shown as literal text in a real browser, exported unchanged.

The browser test drives headless Chromium from Debian's ``chromium`` and ``chromium-driver`` packages
through Selenium, bound to 127.0.0.1 only, and keeps a screenshot of the labelling page under
``.test-artifacts/``. It skips, saying why, where Chromium, its driver or Selenium is missing.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from connectors.labelstudio.client import LabelStudioClient
from connectors.labelstudio.server import TEMPLATE_ENV_VAR, read_credentials, server_status
from connectors.simulate import ensure_annotators, submit_annotations
from engine.cli import main
from engine.store import Store
from engine.workspace import Workspace

pytestmark = pytest.mark.labelstudio

ARTIFACTS = Path(__file__).resolve().parents[1] / ".test-artifacts"
SCRIPT = "<script>alert(1)</script>"
IMAGE = "<img src=x onerror=alert(1)>"
HOSTILE_PROMPT = "Écris deux balises HTML dangereuses, telles quelles."
FRENCH_PROMPT = "Quelle est la capitale de la Côte d'Ivoire ? Réponds en français 🇨🇮"
# Combining accents (NFD) next to precomposed ones, emoji with a skin tone and a zero-width joiner.
FRENCH_A = "Yamoussoukro 👩🏽\u200d💻 : cafe\u0301 cre\u0300me bru\u0302le\u0301e, déjà vu."
FRENCH_B = "Abidjan ✨ « œuvre » — Noe\u0308l à l'hôtel."
OUTPUTS = [
    {"prompt_id": "hostile", "prompt": HOSTILE_PROMPT, "response_id": "script", "model": "m1", "response": SCRIPT},
    {"prompt_id": "hostile", "prompt": HOSTILE_PROMPT, "response_id": "image", "model": "m2", "response": IMAGE},
    {"prompt_id": "french", "prompt": FRENCH_PROMPT, "response_id": "french-a", "model": "m1", "response": FRENCH_A},
    {"prompt_id": "french", "prompt": FRENCH_PROMPT, "response_id": "french-b", "model": "m2", "response": FRENCH_B},
]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Every host name but 127.0.0.1 fails to resolve, so the page can reach nothing else.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--window-size=1400,1000",
]


class HostileWorkspace:
    def __init__(self, root: Path) -> None:
        self.root = root
        state_dir = Workspace(root).labelstudio_dir
        self.url = server_status(state_dir)["url"]
        self.credentials = read_credentials(state_dir)
        self.client = LabelStudioClient(self.url, self.credentials["api_key"])
        with Store(Workspace(root).store_path) as store:
            self.project_id = int(store.execute("SELECT value FROM meta WHERE key LIKE 'labelstudio_project:%'").fetchone()[0])
            self.task_ids = {
                row["prompt_id"]: row["task_id"]
                for row in store.execute("SELECT p.prompt_id, t.task_id FROM pairs t JOIN prompts p ON p.id = t.prompt_row")
            }


def _run(root: Path, *arguments: str) -> None:
    assert main([*arguments, "--workspace", str(root)]) == 0


@pytest.fixture(scope="module")
def hostile_workspace(labelstudio_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileWorkspace]:
    """A workspace whose two pairs (one per prompt) are pushed to its own local server."""
    root = tmp_path_factory.mktemp("hostile") / "ws"
    outputs = root.parent / "outputs.jsonl"
    outputs.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in OUTPUTS), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TEMPLATE_ENV_VAR, str(labelstudio_template))
        patch.delenv("LABEL_STUDIO_URL", raising=False)
        _run(root, "labelstudio", "start", "--port", "18520")
        try:
            _run(root, "ingest", str(outputs))
            _run(root, "round", "--budget", "2", "--strategy", "random", "--seed", "5")
            yield HostileWorkspace(root)
        finally:
            _run(root, "labelstudio", "stop")


def _chrome_driver(user_data_dir: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("Chromium or its driver is missing; install the Debian packages chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def test_browser_shows_markup_as_text(hostile_workspace: HostileWorkspace, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = _chrome_driver(tmp_path / "chromium-profile")
    try:
        # Record alert() calls instead of blocking on a dialog, from before any page script runs.
        driver.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument",
            {"source": "window.__alerts = []; window.alert = (message) => window.__alerts.push(String(message));"},
        )
        driver.get(f"{hostile_workspace.url}/user/login/")
        driver.find_element(By.NAME, "email").send_keys(hostile_workspace.credentials["email"])
        driver.find_element(By.NAME, "password").send_keys(hostile_workspace.credentials["password"])
        driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "/user/login" in driver.current_url:
            time.sleep(0.2)
        # The login redirect must finish first, or it replaces the labelling page with the home page.
        assert "/user/login" not in driver.current_url
        task_id = hostile_workspace.task_ids["hostile"]
        driver.get(f"{hostile_workspace.url}/projects/{hostile_workspace.project_id}/data?task={task_id}")

        body = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (SCRIPT in body and IMAGE in body and "Instructions" in body):
            time.sleep(0.5)
            body = driver.find_element(By.TAG_NAME, "body").text
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "labelstudio-labeling-page.png"))
        alerts = driver.execute_script("return window.__alerts")
        injected_images = driver.find_elements(By.CSS_SELECTOR, 'img[src="x"]')
        injected_scripts = [
            element for element in driver.find_elements(By.TAG_NAME, "script")
            if element.get_attribute("innerHTML").strip() == "alert(1)"
        ]
    finally:
        driver.quit()

    assert SCRIPT in body
    assert IMAGE in body
    assert HOSTILE_PROMPT in body
    assert alerts == []
    assert injected_images == []
    assert injected_scripts == []
    assert (ARTIFACTS / "labelstudio-labeling-page.png").stat().st_size > 10_000


def test_export_keeps_texts_byte_for_byte(hostile_workspace: HostileWorkspace, tmp_path: Path) -> None:
    client = hostile_workspace.client
    annotator = ensure_annotators(client, 1)
    answers = {task_id: ["left"] for task_id in hostile_workspace.task_ids.values()}
    submit_annotations(client, hostile_workspace.project_id, answers, annotator)
    out = tmp_path / "export"

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("LABEL_STUDIO_URL", raising=False)
        _run(hostile_workspace.root, "pull")
    _run(hostile_workspace.root, "export", "--out", str(out), "--test-fraction", "0")
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    table = pq.read_table(out / "train.parquet").to_pylist()

    expected = {
        HOSTILE_PROMPT.encode("utf-8"): {SCRIPT.encode("utf-8"), IMAGE.encode("utf-8")},
        FRENCH_PROMPT.encode("utf-8"): {FRENCH_A.encode("utf-8"), FRENCH_B.encode("utf-8")},
    }
    assert len(rows) == 2
    for source in (rows, table):
        exported = {
            row["prompt"].encode("utf-8"): {row["chosen"].encode("utf-8"), row["rejected"].encode("utf-8")}
            for row in source
        }
        assert exported == expected
