"""A real headless Chromium (Debian's `chromium` and `chromium-driver`, installed by scripts/setup.sh) driven by
Selenium, for the report tests: open a local page, read its DOM through JavaScript, its console log and a
screenshot."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any, Iterator

import numpy as np

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = "chromedriver"


def _which(names: tuple[str, ...]) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError(f"no {' / '.join(names)} on PATH: the report's browser tests need Debian's chromium and "
                       f"chromium-driver (scripts/setup.sh installs them with apt-get when it runs as root)")


@contextmanager
def chromium(width: int = 1400, height: int = 1800) -> Iterator[Any]:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = _which(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--disable-background-networking", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=_which((DRIVER,))))
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: Any, path: Path) -> None:
    driver.get(Path(path).resolve().as_uri())
    driver.execute_script("return document.readyState")  # waits for the load to finish


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def screenshot(driver: Any) -> np.ndarray:
    from matplotlib.image import imread

    return imread(BytesIO(driver.get_screenshot_as_png()))[..., :3]
