"""The quickstart seen through the MLflow UI: a short search logs to a fresh tracking server, then headless
Chromium opens the experiment's runs table, a Pareto trial's run page and the parent run's pareto.png.

Opt-in (`pytest -m browser`); needs /usr/bin/chromium, /usr/bin/chromedriver and selenium, else skips.
Screenshots of every page land in the test's tmp_path; their paths are printed (see them with -s)."""

from __future__ import annotations

import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.search.conftest import ROOT
from tests.search.servers import mlflow_server, run_search_into

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

pytestmark = [pytest.mark.browser, pytest.mark.ray]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
# 4 trials of 3 epochs instead of 8 of 8: about a minute on 2 busy cores, and ASHA still stops some.
# ray.address=local: an embedded Ray, never a cluster that `ray start` left recorded on this machine
TRIALS = 4
SHRINK = (f"search.trials={TRIALS}", "space.epochs=3", "ray.address=local")
WAIT_S = 60.0
# MLflow 3.x opens an experiment in its GenAI view unless the URL (or localStorage) asks for the
# model-training one, which lists runs
TRAINING_VIEW = "workflowType=machine_learning"
METRICS_SHOWN = ("val_acc", "test_acc", "macs")
ASSISTANT_CLOSE = "mlflow.assistant.chat_panel.close"


@dataclass(frozen=True)
class Search:
    """The finished quickstart as MLflow holds it."""

    url: str
    experiment_id: str
    parent_id: str
    parent_name: str
    trials: dict[str, str]  # run id -> run name
    pareto_id: str
    pareto_name: str
    pareto_metrics: dict[str, float]
    plot_width: int  # pixels, from pareto.png's header


def _skip_without_browser() -> None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            pytest.skip(f"{path} is absent (apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("the selenium package is absent (pip install -e '.[dev]')")


def _png_width(path: Path) -> int:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int(struct.unpack(">I", header[16:20])[0])


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Search]:
    """Run the shrunk quickstart into a new MLflow server (sqlite backend); keep the server up for the tests."""
    _skip_without_browser()
    folder = tmp_path_factory.mktemp("browser-search")
    from mlflow import MlflowClient

    with pytest.MonkeyPatch.context() as patch, mlflow_server(folder, f"sqlite:///{folder / 'mlflow.db'}") as url:
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        work = folder / "work"
        work.mkdir()
        config = Path(shutil.copy(QUICKSTART, work / "quickstart.yaml"))
        result = run_search_into(work, config, url, *SHRINK)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("quickstart")
        assert experiment is not None, "the search made no `quickstart` experiment"
        runs = client.search_runs([experiment.experiment_id])
        parents = [r for r in runs if r.data.tags.get("precrop.role") == "search"]
        trials = [r for r in runs if r.data.tags.get("precrop.role") == "trial"]
        assert len(parents) == 1 and len(trials) == TRIALS, [r.info.run_name for r in runs]
        parent = parents[0]
        front = [r for r in trials if r.data.tags.get("pareto") == "true"]
        assert front, "no trial is tagged pareto=true"
        member = front[0]
        assert set(METRICS_SHOWN) <= set(member.data.metrics), sorted(member.data.metrics)
        plot = Path(client.download_artifacts(parent.info.run_id, "pareto.png", str(folder)))
        yield Search(
            url, experiment.experiment_id, parent.info.run_id, parent.info.run_name,
            {r.info.run_id: r.info.run_name for r in trials}, member.info.run_id, member.info.run_name,
            dict(member.data.metrics), _png_width(plot),
        )  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium through the system chromedriver, with a fresh profile."""
    _skip_without_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", f"--user-data-dir={profile}", "--window-size=1600,1000"):  # fmt: skip
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            driver.set_page_load_timeout(WAIT_S)
            yield driver
        finally:
            driver.quit()


def _page_report(driver: WebDriver) -> str:
    """Where the browser is and what it shows, for a failure message."""
    text = driver.execute_script("return document.body ? document.body.innerText : ''") or ""
    source = driver.page_source
    start = max(source.find('id="root"'), 0)
    return (f"url: {driver.current_url}\n--- visible text (start) ---\n{text[:2000]}\n"
            f"--- page source (from #root) ---\n{source[start:start + 2000]}")  # fmt: skip


def _screenshot(driver: WebDriver, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def _wait(driver: WebDriver, folder: Path, what: str, condition: Callable[[WebDriver], Any]) -> Any:
    """WebDriverWait for `condition`; on timeout save a screenshot and fail with the page's text and source."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.25).until(condition)
    except TimeoutException:
        shot = _screenshot(driver, folder, "failure")
        pytest.fail(f"waited {WAIT_S:.0f} s for {what}; screenshot {shot}\n{_page_report(driver)}", pytrace=False)


def _visible(xpath: str) -> Callable[[WebDriver], WebElement | bool]:
    """A wait condition: the first displayed element matching `xpath`."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def check(driver: WebDriver) -> WebElement | bool:
        try:
            return next((e for e in driver.find_elements(By.XPATH, xpath) if e.is_displayed()), False)
        except StaleElementReferenceException:  # React re-rendered between find and is_displayed
            return False

    return check


def _open(driver: WebDriver, url: str) -> None:
    """Load `url` from scratch (a bare hash change would keep the previous page's state)."""
    driver.get("about:blank")
    driver.get(url)


def _close_assistant(driver: WebDriver) -> None:
    """Close the MLflow Assistant side panel where it opened by itself: it narrows the page."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, f"button[data-component-id='{ASSISTANT_CLOSE}']"):
        if button.is_displayed():
            button.click()


def _widen_run_name_column(driver: WebDriver) -> None:
    """Drag the Run Name column's edge right, so the screenshot shows whole names (they are cut with an ellipsis)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    handles = driver.find_elements(By.CSS_SELECTOR, "div[col-id='attributes.`Run Name`'] .ag-header-cell-resize")
    if handles and handles[0].is_displayed():
        ActionChains(driver).click_and_hold(handles[0]).move_by_offset(150, 0).release().perform()


def _js_number(value: float) -> str:
    """How the UI's JavaScript prints a metric: shortest round-trip digits, no `.0` (exact for 1e-4..1e16)."""
    text = repr(float(value))
    return text.removesuffix(".0")


def _xpath_literal(text: str) -> str:
    assert "'" not in text, text
    return f"'{text}'"


def test_experiment_page_lists_the_search_and_its_trials(search: Search, browser: WebDriver, tmp_path: Path) -> None:
    """The runs table shows the parent search run and, once it is expanded, every trial run by name."""
    _open(browser, f"{search.url}/#/experiments/{search.experiment_id}?{TRAINING_VIEW}")
    parent_link = f"//a[contains(@href, '/runs/{search.parent_id}')]"
    _wait(browser, tmp_path, f"the parent run {search.parent_name} in the runs table",
          _visible(f"{parent_link}[normalize-space()={_xpath_literal(search.parent_name)}]"))  # fmt: skip
    _close_assistant(browser)
    # trials are child runs, folded under the parent: the button in the parent's name cell unfolds them
    expand = _wait(browser, tmp_path, "the parent row's expand button",
                   _visible(f"{parent_link}/ancestor::div[@role='gridcell'][1]//button"))  # fmt: skip
    expand.click()
    _widen_run_name_column(browser)
    for run_id, name in search.trials.items():
        link = f"//a[contains(@href, '/runs/{run_id}')][normalize-space()={_xpath_literal(name)}]"
        _wait(browser, tmp_path, f"trial run {name} in the runs table", _visible(link))
    count = "//*[contains(normalize-space(), 'matching runs')][not(*[contains(normalize-space(), 'matching runs')])]"
    rows = _wait(browser, tmp_path, "the row count", _visible(count))
    _screenshot(browser, tmp_path, "experiment-runs")
    assert rows.text.split()[0] == str(1 + len(search.trials)), _page_report(browser)


def test_pareto_trial_page_shows_metrics_and_the_pareto_tag(search: Search, browser: WebDriver, tmp_path: Path) -> None:
    """A Pareto member's run page shows its name, val_acc/test_acc/macs with their values, and `pareto: true`."""
    _open(browser, f"{search.url}/#/experiments/{search.experiment_id}/runs/{search.pareto_id}?{TRAINING_VIEW}")
    title = f"//*[@data-testid='runs-header'][normalize-space()={_xpath_literal(search.pareto_name)}]"
    _wait(browser, tmp_path, f"the run title {search.pareto_name}", _visible(title))
    _close_assistant(browser)
    rows: list[WebElement] = []
    for metric in METRICS_SHOWN:
        value = _js_number(search.pareto_metrics[metric])
        row = f"//div[@role='row'][.//a[normalize-space()='{metric}']][.//*[normalize-space()='{value}']]"
        rows.append(_wait(browser, tmp_path, f"metric {metric} = {value} in the Metrics table", _visible(row)))
        assert rows[-1].text.split() == [metric, value], _page_report(browser)
    tag = _wait(browser, tmp_path, "the tag pareto: true", _visible("//*[@role='status'][@title='pareto']"))
    # test_acc is logged last, below the fold of the Metrics table: scroll that table to it for the screenshot
    browser.execute_script("arguments[0].scrollIntoView({block: 'nearest'})", rows[METRICS_SHOWN.index("test_acc")])
    _screenshot(browser, tmp_path, "pareto-trial")
    assert "".join(tag.text.split()) == "pareto:true", _page_report(browser)  # rendered as `pareto` + `: true`


def test_parent_artifact_page_shows_the_pareto_plot(search: Search, browser: WebDriver, tmp_path: Path) -> None:
    """The parent run's Artifacts tab lists the summary files and displays pareto.png, fully loaded."""
    route = f"#/experiments/{search.experiment_id}/runs/{search.parent_id}/artifacts/pareto.png"
    _open(browser, f"{search.url}/{route}?{TRAINING_VIEW}")
    for name in ("pareto.csv", "pareto.json", "pareto.png"):
        _wait(browser, tmp_path, f"{name} in the artifact tree", _visible(f"//*[normalize-space()='{name}']"))
    _close_assistant(browser)
    image = _wait(browser, tmp_path, "the pareto.png <img>", _visible("//img[@alt='pareto.png']"))
    script = "return arguments[0].complete && arguments[0].naturalWidth"
    loaded = _wait(browser, tmp_path, "pareto.png to finish loading", lambda d: d.execute_script(script, image))
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", image)
    _screenshot(browser, tmp_path, "parent-pareto-png")
    shown = f"the page shows a {loaded} px wide image ({image.size} on screen); pareto.png is {search.plot_width}"
    assert loaded == search.plot_width, f"{shown}\n{_page_report(browser)}"
    assert image.size["width"] > 100 and image.size["height"] > 100, f"{shown}\n{_page_report(browser)}"
