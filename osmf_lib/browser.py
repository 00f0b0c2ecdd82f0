"""A real browser's view of a page: its screenshot, its broken images and its script errors.

Headless Chromium driven by selenium (in the lock). Optional: the night's report is complete
without it, and `make setup` does not install a browser. `find` looks for `chromium` and
`chromedriver` on PATH (Debian: `make browser`, i.e. `apt-get install chromium chromium-driver`)
and says what is missing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

BINARIES = {"chromium": "chromium", "chromedriver": "chromium-driver"}  # binary -> Debian package
WIDTH = 1280
# Chromium cannot take a screenshot taller than its largest texture; a long report is cut here.
MAX_HEIGHT = 8000
# Images that did not load or decode: not complete, or complete with no pixels.
BROKEN_IMAGES = """
return Array.from(document.images)
    .filter(image => !image.complete || image.naturalWidth === 0)
    .map(image => image.getAttribute("src").slice(0, 120));
"""


class BrowserMissing(RuntimeError):
    """No headless browser here; the message says what to install."""


@dataclass(frozen=True)
class Rendering:
    png: bytes
    broken_images: tuple[str, ...]
    errors: tuple[str, ...]  # the console's errors: uncaught script errors, resources that failed to load


def find() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or BrowserMissing naming what to install."""
    found = {binary: shutil.which(binary) for binary in BINARIES}
    missing = [binary for binary, path in found.items() if path is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (in requirements.lock: make setup)")
    if missing:
        packages = " ".join(BINARIES.values())
        raise BrowserMissing(f"needs {', '.join(missing)} on PATH: `make browser` (apt-get install {packages})")
    return found["chromium"], found["chromedriver"]


def arguments(euid: int) -> list[str]:
    """Chromium's flags; the sandbox is dropped only for root, which it refuses to run as (and
    which containers and CI often are)."""
    return ["--headless=new", *(["--no-sandbox"] if euid == 0 else []), "--disable-gpu", "--disable-dev-shm-usage"]


def render(page: str) -> Rendering:
    """Open the HTML `page` in headless Chromium as a local file and look at what it shows."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = find()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in arguments(os.geteuid()):
        options.add_argument(argument)
    options.add_argument(f"--window-size={WIDTH},800")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with tempfile.TemporaryDirectory(prefix="osmf-browser-") as folder:
        path = Path(folder) / "page.html"
        path.write_text(page)
        driver = webdriver.Chrome(service=Service(chromedriver), options=options)
        try:
            driver.get(path.as_uri())
            broken = tuple(driver.execute_script(BROKEN_IMAGES))
            errors = tuple(entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE")
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(WIDTH, min(height, MAX_HEIGHT))
            png = driver.get_screenshot_as_png()
        finally:
            driver.quit()
    return Rendering(png, broken, errors)
