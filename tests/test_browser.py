"""End to end in a real browser: the panoptic explorer notebook run by JupyterLab in Chromium.

A JupyterLab server is started on 127.0.0.1 (a free port, a random token, a temporary root
folder and temporary Jupyter config/data/runtime folders, so nothing of the user's set-up is
read or written), a quick-mode copy of ``notebooks/04_panoptic_explorer.ipynb`` is put in its
root (parameters injected with papermill, not executed), and headless Chromium driven by
Playwright opens it, runs all cells from the Run menu (the kernel trains the two-iteration quick
model), then moves the explorer's "image" and "opacity" sliders with the keyboard and unticks
"stuff", checking each time that the overlay shown by the ``ipywidgets.Image`` really changes
(a new PNG in its ``src`` and other pixels in a screenshot of the ``<img>``). Screenshots of
the page before and after and of each overlay go to the test's ``tmp_path``.

Skipped only when Playwright is not importable or no Chromium executable exists (Debian:
``apt-get install chromium``; ``.ci/run`` installs it). Playwright's own browser downloads are
not used: the system Chromium is launched with ``executable_path``.
"""

import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageChops

try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip("playwright is not importable (pip install playwright)", allow_module_level=True)

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_panoptic_explorer.ipynb"

#: Chromium flags: no sandbox (root in CI), no GPU, and nothing that reaches out to the network
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SERVER_START_S = 60       # until /api/status answers
KERNEL_RUN_S = 180        # kernel start + quick training (2 iterations) + first render, 2 cores
WIDGET_UPDATE_S = 60      # one round trip browser -> kernel -> re-render -> browser
UI_S = 30                 # JupyterLab's own UI (menus, opening the notebook)


def find_chromium():
    """The system Chromium executable, or ``None``."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the JupyterLab server --------------------------------------------------------------------
class Lab:
    """A running JupyterLab server: ``url`` (base URL), ``token``, ``root``, ``log``."""

    def __init__(self, url, token, root, log, proc):
        self.url, self.token, self.root, self.log, self.proc = url, token, root, log, proc

    def api(self, path, method="GET"):
        req = urllib.request.Request(self.url + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def log_tail(self, n=4000):
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def _write_settings(config_dir: Path):
    """User settings: no news or update checks (no internet), no notebook windowing (every
    cell is rendered, whatever its position)."""
    settings = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
            {"fetchNews": "false", "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings":
            {"windowingMode": "none"},
    }
    for name, value in settings.items():
        path = config_dir / "lab" / "user-settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


def _stop(proc: subprocess.Popen, lab: "Lab" = None):
    """Shut the kernels down through the API, then the server (SIGTERM, SIGKILL if needed)."""
    if proc.poll() is None and lab is not None:
        try:
            for kernel in lab.api("/api/kernels"):
                lab.api(f"/api/kernels/{kernel['id']}", method="DELETE")
        except (OSError, ValueError):
            pass  # the server is gone or broken: the signals below still apply
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def lab(tmp_path):
    """JupyterLab serving ``tmp_path/root`` on 127.0.0.1; always stopped afterwards."""
    root, home = tmp_path / "root", tmp_path / "jupyter"
    root.mkdir()
    env = dict(os.environ)
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                     ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")):
        env[var] = str(home / sub)
        (home / sub).mkdir(parents=True)
    for var in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "JUPYTER_PREFER_ENV_PATH"):
        env.pop(var, None)
    _write_settings(home / "config")
    port, token = free_port(), secrets.token_hex(16)
    log = tmp_path / "jupyterlab.log"
    # The server runs on this interpreter (the venv's): the python3 kernelspec's "python" is
    # launched as sys.executable, so the kernel imports this checkout's spatialflow.
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           # nothing from the internet: no news feed, no update check, no PyPI extension list
           "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class="
           "jupyterlab.handlers.announcements.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI runs as root
        cmd.append("--allow-root")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    server = Lab(f"http://127.0.0.1:{port}", token, root, log, proc)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                server.api("/api/status")
                break
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer in {SERVER_START_S} s:\n"
                                f"{server.log_tail()}")
                time.sleep(0.25)
        yield server
    finally:
        _stop(proc, server)


def quick_notebook(root: Path) -> str:
    """A copy of the explorer notebook in ``root`` with quick-mode parameters (not run)."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(NOTEBOOK))  # papermill's reader: every cell gets its tags list
    nb = parameterize_notebook(nb, {"QUICK": True, "RUN": None, "OUT": str(root / "out")})
    name = "explorer.ipynb"
    nbformat.write(nb, root / name)
    return name


# --- the browser --------------------------------------------------------------------------------
@pytest.fixture
def chromium():
    """Headless system Chromium under Playwright (skips the test when there is none)."""
    executable = find_chromium()
    if executable is None:
        pytest.skip("no chromium executable found (Debian: apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def dismiss_dialogs(page):
    """Accept any JupyterLab dialog (e.g. "Select Kernel": its accept button starts the
    preferred kernel) and close notification toasts."""
    for selector in (".jp-Dialog .jp-Dialog-button.jp-mod-accept",
                     ".jp-Notification-Toast-Close"):
        for button in page.locator(selector).all():
            try:
                button.click(timeout=2000)
            except PlaywrightError:  # gone in the meantime
                pass


def wait_for_kernel_idle(page, timeout_s):
    """Until the status bar shows the notebook's kernel as idle (not "No Kernel")."""
    expect(page.locator('#jp-main-statusbar [title^="Change kernel"]')).to_have_text(
        re.compile(r"^(?!No Kernel).*\| Idle$"), timeout=timeout_s * 1000)


def run_all_cells(page):
    """Run > Run All Cells, from the menu bar."""
    page.locator(".lm-MenuBar-content").get_by_role("menuitem", name="Run", exact=True).click()
    page.locator("#jp-mainmenu-run").get_by_role("menuitem", name="Run All Cells",
                                                 exact=True).click()


def wait_for_widget(page, timeout_s):
    """The explorer's widget once its image is shown; fails early on a traceback in an output
    and accepts dialogs that pop up in the meantime."""
    widget = page.locator(".jp-OutputArea-output .widget-vbox").filter(
        has=page.locator("img.widget-image")).first
    error = tracebacks(page)
    deadline = time.monotonic() + timeout_s
    while True:
        dismiss_dialogs(page)
        try:
            expect(widget.or_(error).first).to_be_visible(timeout=2000)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    assert error.count() == 0, "the notebook failed:\n" + outputs_text(page)
    return widget


def tracebacks(page):
    """The cell outputs showing an exception."""
    return page.locator(".jp-OutputArea-output").filter(has_text="Traceback")


def outputs_text(page) -> str:
    return "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())


def slider(widget, description):
    """The ipywidgets slider (``.widget-slider``) whose label is ``description``."""
    label = widget.page.locator("label.widget-label").filter(
        has_text=re.compile(f"^{re.escape(description)}$"))
    return widget.locator(".widget-slider").filter(has=label)


def shown_image(img, path=None):
    """The pixels of the ``<img>`` as the page shows them (a PIL image), once decoded."""
    img.page.wait_for_function("el => el.complete && el.naturalWidth > 0",
                               arg=img.element_handle(), timeout=WIDGET_UPDATE_S * 1000)
    png = img.screenshot(path=None if path is None else str(path))
    return Image.open(io.BytesIO(png)).convert("RGB")


def same_pixels(a, b) -> bool:
    return a.size == b.size and ImageChops.difference(a, b).getbbox() is None


def change_and_wait(img, action, path):
    """Do ``action``, wait until the widget shows a new PNG (a new blob URL in ``src``) and
    return its pixels (saved to ``path``)."""
    old = img.get_attribute("src")
    action()
    img.page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                               arg=[img.element_handle(), old],
                               timeout=WIDGET_UPDATE_S * 1000)
    return shown_image(img, path)


# --- the test ------------------------------------------------------------------------------------
def test_explorer_notebook_runs_and_reacts_in_jupyterlab(chromium, lab, tmp_path):
    name = quick_notebook(lab.root)
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(UI_S * 1000)
    try:
        page.goto(f"{lab.url}/lab/tree/{name}?token={lab.token}")
        expect(page.locator(".jp-NotebookPanel")).to_be_visible(timeout=UI_S * 1000)
        # the notebook's kernelspec (python3) starts by itself; run only once it is idle,
        # else JupyterLab asks for a kernel first
        dismiss_dialogs(page)
        wait_for_kernel_idle(page, KERNEL_RUN_S)
        run_all_cells(page)
        widget = wait_for_widget(page, KERNEL_RUN_S)
        img = widget.locator("img.widget-image")
        img.scroll_into_view_if_needed()
        # the last cell (the explorer's state) has run too: its prompt shows a number
        expect(page.locator(".jp-CodeCell .jp-InputPrompt").last).to_have_text(
            re.compile(r"\[\d+\]"), timeout=WIDGET_UPDATE_S * 1000)

        first = shown_image(img, tmp_path / "overlay_0_first.png")
        assert first.width > 50 and first.height > 50
        # shown at the PNG's own aspect ratio (not stretched by the info column beside it)
        natural = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
        assert abs(first.width / first.height - natural[0] / natural[1]) < 0.05, \
            (first.size, natural)
        assert same_pixels(first, shown_image(img)), "the overlay changes by itself"
        page.screenshot(path=str(tmp_path / "page_before.png"))

        # "image" slider: its handle (role "slider", focused by press) one step right -> the
        # next image of the split
        image_slider = slider(widget, "image")
        expect(image_slider.locator(".widget-readout")).to_have_text("0")
        handle = image_slider.get_by_role("slider")
        after_image = change_and_wait(img, lambda: handle.press("ArrowRight"),
                                      tmp_path / "overlay_1_image.png")
        expect(image_slider.locator(".widget-readout")).to_have_text("1")
        assert not same_pixels(first, after_image), "moving the image slider changed nothing"

        # "opacity" slider to its maximum (End key): the overlays turn opaque
        opacity = slider(widget, "opacity").get_by_role("slider")
        after_opacity = change_and_wait(img, lambda: opacity.press("End"),
                                        tmp_path / "overlay_2_opacity.png")
        expect(slider(widget, "opacity").locator(".widget-readout")).to_have_text("1.00")
        assert not same_pixels(after_image, after_opacity), "opacity 1 changed nothing"

        # "stuff" checkbox off: the stuff segments are hidden
        stuff = widget.get_by_role("checkbox", name="stuff", exact=True)
        after_stuff = change_and_wait(img, stuff.uncheck, tmp_path / "overlay_3_no_stuff.png")
        assert not same_pixels(after_opacity, after_stuff), "hiding stuff changed nothing"
        assert tracebacks(page).count() == 0, outputs_text(page)
        page.screenshot(path=str(tmp_path / "page_after.png"))
    except BaseException:
        print(f"JupyterLab log tail:\n{lab.log_tail()}")  # shown by pytest with the failure
        try:
            page.screenshot(path=str(tmp_path / "page_failure.png"), full_page=True)
        except PlaywrightError:
            pass
        raise
    finally:
        page.close()
