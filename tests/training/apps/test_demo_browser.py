"""The web demo in a real browser: headless Chromium uploads a photo, types labels, runs, and reads the results.

Needs Debian's `chromium` and `chromium-driver` (`make test` installs them when run as root, as in CI) and the
`[demo]` extra; skips with the reason otherwise. Screenshots are kept in outputs/demo-screenshots/.
"""

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from tests.conftest import REPO_ROOT, shared_path

pytest.importorskip("gradio", reason="the demo extra is not installed: pip install -e '.[demo]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[dev]'")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = REPO_ROOT / "outputs" / "demo-screenshots"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.tiny_models import tiny_catseg_config

    from modeling_catseg import CatSegForSemanticSegmentation
    from training.models.presets import catseg_processor
    from training.models.remote_code import save_for_hub

    folder = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    save_for_hub(
        CatSegForSemanticSegmentation(tiny_catseg_config()).eval(), catseg_processor(64, 16), folder / "model"
    )
    port = _free_port()
    log = open(folder / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "training.commands.demo", "--model", str(folder / "model"), "--port", str(port),
         "--temp-dir", str(folder / "work"), "--device", "cpu"],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the demo did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield url, folder
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "Chromium or chromedriver is missing: apt-get install chromium chromium-driver (make test does, as root)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,800",
    ):
        options.add_argument(flag)  # fmt: skip
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, condition, seconds, what):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.25).until(
        condition, message=f"timed out waiting for {what}"
    )


def _screenshots(driver, stem: Path, width: int, height: int, mobile: bool) -> None:
    """``stem.png``: the top of the page in a ``width`` x ``height`` viewport; ``stem-full.png``: the whole page."""
    import base64

    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(1)  # let the layout settle at the new size
    stem.with_suffix(".png").write_bytes(
        base64.b64decode(driver.execute_cdp_cmd("Page.captureScreenshot", {})["data"])
    )
    full = driver.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True})
    Path(f"{stem}-full.png").write_bytes(base64.b64decode(full["data"]))


def test_upload_type_labels_run_and_read_the_table(server, browser):
    from selenium.webdriver.common.by import By

    url, folder = server
    photo = min(shared_path("data", "coco128-semantic", "images").glob("*.jpg"))
    browser.get(url)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"), 60, "the upload field")
    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(photo))
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#image img"), 60, "the uploaded photo")
    labels = browser.find_element(By.CSS_SELECTOR, "#labels textarea")
    labels.clear()
    labels.send_keys("background\nbroccoli\nred box\nfood, meal")
    browser.find_element(By.CSS_SELECTOR, "#run").click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#overlay img"), 90, "the overlay")
    seconds = "#seconds textarea, #seconds input"
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, seconds).get_attribute("value"), 30, "the time taken")
    rows = {}
    for cell in browser.find_elements(By.CSS_SELECTOR, "#table [role=gridcell]"):
        rows.setdefault(int(cell.get_attribute("data-row")), {})[int(cell.get_attribute("data-col"))] = (
            cell.get_attribute("textContent").strip()
        )
    rows = [[row[column] for column in sorted(row)] for _, row in sorted(rows.items())]
    # The table names a class by its first synonym, as summary() and the pipeline do.
    assert rows and {row[0] for row in rows} <= {"background", "broccoli", "red box", "food"}, rows
    fractions = [float(row[1]) for row in rows]
    assert fractions == sorted(fractions, reverse=True) and abs(sum(fractions) - 100) < 0.5, rows
    assert browser.find_elements(By.CSS_SELECTOR, "#annotated img")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, (width, height, mobile) in {
        "desktop-1280x800": (1280, 800, False),
        "phone-390x844": (390, 844, True),
    }.items():
        _screenshots(browser, SCREENSHOTS / name, width, height, mobile)
    written = {p for p in (folder / "work").rglob("*") if p.is_file()}
    assert any(p.name == "label_map.png" for p in written) and any(p.name == "segmentation.json" for p in written)
    assert any(p.name == photo.name for p in written)  # Gradio keeps the upload in the app's folder too


def test_bad_labels_are_a_message_in_the_page(server, browser):
    from selenium.webdriver.common.by import By

    url, _ = server
    browser.get(url)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#labels textarea"), 60, "the page")
    labels = browser.find_element(By.CSS_SELECTOR, "#labels textarea")
    labels.clear()
    labels.send_keys("cat\ncat")
    browser.find_element(By.CSS_SELECTOR, "#run").click()
    _wait(browser, lambda d: "duplicate labels" in d.find_element(By.TAG_NAME, "body").text, 30, "the error message")
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text


def test_concurrent_requests_are_queued_and_all_answered(server):
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    url, folder = server
    photo = sorted(shared_path("data", "coco128-semantic", "images").glob("*.jpg"))[1]
    client = Client(url, verbose=False)

    def request(labels):
        return client.predict(
            handle_file(str(photo)), labels, str(folder / "model"), "whole", "model default", api_name="/on_run"
        )

    with ThreadPoolExecutor(3) as pool:
        tables = [result[2] for result in pool.map(request, ["sky, tree", "cat\ndog", "road, car, person"])]
    # Each answer is its own vocabulary's table: nothing mixed up or dropped while the requests waited in the queue.
    assert [{row[0] for row in table["data"]} <= set(vocabulary) for table, vocabulary in
            zip(tables, (["sky", "tree"], ["cat", "dog"], ["road", "car", "person"]))] == [True] * 3  # fmt: skip
