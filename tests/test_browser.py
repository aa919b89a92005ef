"""The annotator's view in a real headless Chromium: the demo's Grad-CAM pre-labels show in Label
Studio's labelling view, and an annotation corrected and submitted there reaches our database;
with Auto-Annotation on, one click of the smart keypoint tool draws the backend's mask there.

Debian's ``chromium`` and ``chromium-driver`` driven by Selenium; nothing is downloaded (both
paths are given, SE_OFFLINE=true). Without them the test skips, except under CI=true where it
fails (.ci/run installs them). Screenshots go to out/test-artifacts/.

How a pre-label is seen: the demo's X-rays are gray, the regions are drawn in colour, so the
coloured pixels of a screenshot over the image are the drawn regions. Each region is shown on
its own (the others hidden with the regions panel's eye buttons) and must cover its place.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from label_studio_sdk import LabelStudio
from PIL import Image, ImageDraw, ImageFilter
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from db import get_project, make_engine, revisions, session_factory
from explain.labelstudio.rle import rle_to_mask
from labeler.importing import import_images
from labeler.project import init_project
from labeler.workspace import Workspace

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "out" / "test-artifacts"
TIMEOUT = 120  # seconds for any one wait: generous, for a loaded 2-core machine
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
MISSING = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
WHY_MISSING = f"{' and '.join(MISSING)} not found: install Debian's chromium and chromium-driver (.ci/run does)"
KINDS = {"brush": "brushlabels", "polygon": "polygonlabels"}  # outliner node type -> result type

pytestmark = [pytest.mark.browser, pytest.mark.skipif(bool(MISSING) and not IN_CI, reason=WHY_MISSING)]


def start_chromium() -> webdriver.Chrome:
    """Headless Chromium, 1600x1000, through /usr/bin/chromedriver; Selenium downloads nothing."""
    os.environ["SE_OFFLINE"] = "true"  # belt and braces: with both paths given Selenium Manager never runs
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--no-proxy-server", "--window-size=1600,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    return driver


@pytest.fixture(scope="module")
def browser():
    """A `start_chromium()` browser, quit at the end of the module."""
    if MISSING:
        pytest.fail(WHY_MISSING)  # only reached under CI
    driver = start_chromium()
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, until, message: str):
    """Poll ``until(driver)`` until it is truthy (returned) or TIMEOUT passes (fails with message);
    an element missing or replaced by a re-render meanwhile counts as not yet."""
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, TIMEOUT, poll_frequency=0.25, ignored_exceptions=ignored).until(until, message)


def log_in(driver, url: str, username: str, password: str):
    """Log in through Label Studio's login form (nothing to do when the browser is logged in)."""
    driver.get(f"{url}/user/login/")
    wait(driver, lambda d: d.find_elements(By.NAME, "email") or "/user/login" not in d.current_url, "no login form")
    if "/user/login" not in driver.current_url:
        return
    driver.find_element(By.NAME, "email").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(driver, lambda d: "/user/login" not in d.current_url, "the demo login was refused")


def open_task(driver, url: str, project_id: int, task_id: int):
    """Open the task in the labelling view; waits until the regions panel lists its brush pre-label."""
    driver.get(f"{url}/projects/{project_id}/data?task={task_id}")
    wait(driver, lambda d: outliner_nodes(d, "brush"), f"task {task_id}: the regions panel never listed a brush pre-label")


def outliner_nodes(driver, kind: str) -> list:
    """The regions panel's entries of one kind (brush, polygon)."""
    return driver.find_elements(By.CSS_SELECTOR, f".lsf-tree__node_type_{kind}region")


def toggle_visibility(driver, index: int):
    """Click the eye button of the index-th brush region in the regions panel."""

    def click(d):
        node = outliner_nodes(d, "brush")[index]
        button = node.find_element(By.CSS_SELECTOR, ".lsf-outliner-item__control_type_visibility button")
        d.execute_script("arguments[0].click()", button)  # shown on hover only; no hover highlight
        return True

    wait(driver, click, f"no eye button on brush region {index}")


def coloured(driver) -> np.ndarray:
    """Screenshot of the displayed image, True where a pixel is coloured (the X-ray itself is gray)."""
    shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")).astype(np.int16)
    scale = driver.execute_script("return window.devicePixelRatio")
    box = driver.find_element(By.CSS_SELECTOR, ".lsf-image").rect
    left, top = round(box["x"] * scale), round(box["y"] * scale)
    crop = shot[top:top + round(box["height"] * scale), left:left + round(box["width"] * scale)]
    return crop.max(axis=-1) - crop.min(axis=-1) > 8


def region_mask(result: dict, height: int, width: int) -> np.ndarray:
    """Where a pre-label (brush or polygon result) lies on the image displayed at height x width."""
    if result["type"] == "brushlabels":
        mask = rle_to_mask(result["value"]["rle"], result["original_height"], result["original_width"])
        shape = Image.fromarray(mask).resize((width, height), Image.NEAREST)
    else:
        shape = Image.new("L", (width, height))
        points = [(x * width / 100, y * height / 100) for x, y in result["value"]["points"]]
        ImageDraw.Draw(shape).polygon(points, fill=255)
    return np.asarray(shape) > 0


def drawn_in_place(driver, results: list[dict]) -> bool:
    """The coloured pixels cover at least half of these regions and lie (nearly) all on them."""
    seen = coloured(driver)
    place = np.zeros(seen.shape, bool)
    for result in results:
        place |= region_mask(result, *seen.shape)
    near = np.asarray(Image.fromarray(place).filter(ImageFilter.MaxFilter(9)))  # outline, antialiasing
    return place.any() and (seen & place).sum() >= 0.5 * place.sum() and (seen & ~near).sum() <= 0.05 * place.sum()


def screenshot(driver, name: str) -> Path:
    """Save the browser's screenshot as out/test-artifacts/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def pre_labelled_task(ls: LabelStudio, project_id: int) -> tuple[int, list[dict]]:
    """A task not annotated yet whose prediction has brush masks besides the class choice and no
    other region kind (the default config outlines with the brush only): its id and those results."""
    annotated = {task.id for task in ls.tasks.list(project=project_id) if task.total_annotations}
    seen = []
    for prediction in sorted(ls.predictions.list(project=project_id), key=lambda p: p.task):
        kinds = sorted(r["type"] for r in prediction.result)
        seen.append(kinds)
        if prediction.task not in annotated and set(kinds) == {"brushlabels", "choices"}:
            return prediction.task, [r for r in prediction.result if r["type"] == "brushlabels"]
    pytest.fail(f"no task of project {project_id} is pre-labelled with brush masks alone: {seen}")


def test_annotator_sees_pre_labels_corrects_one_and_the_revision_is_stored(browser, demo_run):
    demo, studio = demo_run.demo, demo_run.demo.studio
    task_id, brushes = pre_labelled_task(LabelStudio(base_url=studio.url, api_key=studio.token), demo.project_id)

    log_in(browser, studio.url, studio.username, studio.password)
    open_task(browser, studio.url, demo.project_id, task_id)
    wait(browser, lambda d: len(outliner_nodes(d, "brush")) == len(brushes),
         f"the regions panel does not list the {len(brushes)} brush pre-label(s)")
    assert not outliner_nodes(browser, "polygon")  # one region kind per area
    wait(browser, lambda d: drawn_in_place(d, brushes),
         "the pre-labels are listed but not drawn over the image where the prediction puts them")
    screenshot(browser, "annotator-view")

    # each region alone (the panel's order need not be the prediction's: each must match one of them)
    for index in range(len(brushes)):
        toggle_visibility(browser, index)
    wait(browser, lambda d: not coloured(d).any(), "hiding every pre-label left colour over the X-ray")
    for index in range(len(brushes)):
        toggle_visibility(browser, index)
        wait(browser, lambda d: any(drawn_in_place(d, [brush]) for brush in brushes),
             f"brush region {index} shown alone is not drawn where a predicted region lies")
        toggle_visibility(browser, index)
        wait(browser, lambda d: not coloured(d).any(), f"brush region {index} did not hide")
    for index in range(len(brushes)):
        toggle_visibility(browser, index)

    # the correction: a wrong region costs one deletion; the others and the diagnosis stay
    outliner_nodes(browser, "brush")[0].find_element(By.CSS_SELECTOR, ".lsf-outliner-item").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "button[aria-label='Delete selected region']"),
         "selecting a brush region offered no delete button")[0].click()
    wait(browser, lambda d: len(outliner_nodes(d, "brush")) == len(brushes) - 1, "the brush region was not deleted")
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Submit current annotation']").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='bottombar-update-button']"),
         "after Submit the view never showed the saved annotation (its Update button)")
    screenshot(browser, "annotator-view-submitted")

    # Label Studio's webhook -> the backend -> our database
    engine = make_engine(demo_run.database_url)
    sessions = session_factory(engine)

    def stored(_driver):
        with sessions() as session:
            project = get_project(session, demo.project_id)
            return project and revisions(session, project, task_id)

    try:
        rows = wait(browser, stored, f"no annotation revision of task {task_id} reached {demo_run.database_url}")
    finally:
        engine.dispose()
    assert [row.action for row in rows] == ["created"]
    result = rows[0].result
    assert sorted(r["type"] for r in result) == ["brushlabels"] * (len(brushes) - 1) + ["choices"]  # one region gone
    kept = [r["value"]["rle"] for r in result if r["type"] == "brushlabels"]
    assert all(rle in [b["value"]["rle"] for b in brushes] for rle in kept)  # the others exactly as predicted
    assert rows[0].completed_by is not None


def interactive_answers(backend_url: str) -> float:
    """The backend's ``labeler_interactive_answers_total``, all ``cache`` labels together."""
    text = requests.get(f"{backend_url}/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("labeler_interactive_answers_total{"))


def blob_centre(mask_path: Path) -> tuple[float, float]:
    """(x, y) as fractions of the image of the centre of the largest lesion in a 0/255 mask file."""
    lesion = np.asarray(Image.open(mask_path)) > 0
    count, labels, stats, centres = cv2.connectedComponentsWithStats(lesion.view(np.uint8))
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    assert labels[round(centres[largest][1]), round(centres[largest][0])] == largest  # a round blob: its centre is on it
    return (centres[largest][0] + 0.5) / lesion.shape[1], (centres[largest][1] + 0.5) / lesion.shape[0]


def test_one_click_of_the_smart_keypoint_draws_the_backends_mask_over_the_lesion(browser, demo_run):
    demo, studio = demo_run.demo, demo_run.demo.studio
    ls = LabelStudio(base_url=studio.url, api_key=studio.token)
    ws = Workspace(studio.url, studio.token, None, demo_run.database_url)
    project_id = init_project(ws, demo_run.folder / "model.keras", "Click to segment", demo.backend_url, interactive=True)
    ls.projects.update(id=project_id, show_collab_predictions=False)  # no pre-label on opening: only the click's mask
    name = sorted((demo_run.folder / "data" / "masks").glob("opacity*.png"))[0].name
    import_images(Workspace(studio.url, studio.token, project_id, demo_run.database_url),
                  [demo_run.folder / "data" / "images" / "opacity" / name], studio.document_root)
    [task] = ls.tasks.list(project=project_id)
    x, y = blob_centre(demo_run.folder / "data" / "masks" / name)
    answers = interactive_answers(demo.backend_url)

    log_in(browser, studio.url, studio.username, studio.password)
    browser.get(f"{studio.url}/projects/{project_id}/data?task={task.id}")
    toggle = "[data-testid=bottombar-auto-annotation-toggle]"
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, toggle),
         "no Auto-Annotation toggle: the project's smart tools or its interactive backend are not seen")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".lsf-image"), "the labelling view showed no image")
    assert not outliner_nodes(browser, "brush") and not coloured(browser).any()  # nothing drawn before the click

    # Auto-Annotation on: the smart tools appear (the toggle found afresh: the view may re-render meanwhile,
    # and a stale element raises before any click, so that it is clicked once)
    wait(browser, lambda d: d.execute_script("arguments[0].click(); return true", d.find_element(By.CSS_SELECTOR, toggle)),
         "the Auto-Annotation toggle could not be clicked")
    group = wait(browser, lambda d: [t for t in d.find_elements(By.CSS_SELECTOR, ".lsf-tool_smart")
                                     if t.get_attribute("aria-label") is None and t.is_displayed()],
                 "Auto-Annotation showed no smart tool group")[0]
    ActionChains(browser).move_to_element(group).perform()  # hovering the group shows its tools
    wait(browser, lambda d: [t for t in d.find_elements(By.CSS_SELECTOR, ".lsf-tool_smart[aria-label=key-point-tool]")
                             if t.is_displayed()], "no smart keypoint tool in the group")[0].click()
    # the label bars in the config's order: mask (brush), click (smart keypoint), box (smart rectangle)
    label = browser.find_elements(By.CSS_SELECTOR, ".lsf-labels")[1].find_element(By.CSS_SELECTOR, ".lsf-label")
    assert label.get_attribute("textContent").startswith("Opacity")
    browser.execute_script("arguments[0].click()", label)  # a script click: scrolling would move the image
    wait(browser, lambda d: "lsf-label_selected" in label.get_attribute("class"), "the keypoint's label was not selected")

    image = browser.find_element(By.CSS_SELECTOR, ".lsf-image").rect
    ActionChains(browser).move_to_element_with_offset(
        browser.find_element(By.CSS_SELECTOR, ".lsf-image"), round((x - 0.5) * image["width"]), round((y - 0.5) * image["height"])
    ).click().perform()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=bottombar-accept-suggestions-button]"),
         "the click brought no suggestion back from the backend")
    assert interactive_answers(demo.backend_url) == answers + 1  # Label Studio's UI asked our backend once
    screenshot(browser, "click-to-segment-suggestion")

    browser.find_element(By.CSS_SELECTOR, "[data-testid=bottombar-accept-suggestions-button]").click()
    wait(browser, lambda d: len(outliner_nodes(d, "brush")) == 1, "the accepted suggestion is not listed as a brush region")
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Submit current annotation']").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='bottombar-update-button']"),
         "after Submit the view never showed the saved annotation (its Update button)")
    [annotation] = ls.annotations.list(id=task.id)
    [brush] = [r for r in annotation.result if r["type"] == "brushlabels"]
    assert brush["from_name"] == "mask" and brush["value"]["brushlabels"] == ["Opacity"]
    mask = region_mask(brush, brush["original_height"], brush["original_width"])
    assert mask[int(y * mask.shape[0]), int(x * mask.shape[1])]  # the answer lies under the click, on the lesion
    wait(browser, lambda d: drawn_in_place(d, [brush]), "the backend's mask is not drawn over the image where it lies")
    screenshot(browser, "click-to-segment")
