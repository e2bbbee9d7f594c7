"""A class at once: the app started the README's way, used by students in one headless Chromium.

    python -m bench.classroom                              # 8 and 30 students, 500 uploads (a long run)
    python -m bench.classroom --students 2 --uploads 20    # a small run that proves it works
    python -m bench.classroom --json                       # one JSON object instead of tables

It starts ``python -m app.launch --server.port <free port>`` with the shipped models (no
DRNETS_MODELS_DIR, OMP_NUM_THREADS as the caller's environment has it), waits for the health
check, and measures, as a student's browser sees it:

1. first page: health check OK -> the answer on screen ("DRNet FLOPs" shown), and -> the page
   complete (its charts drawn, script idle), in a fresh browser context on the fresh server; then a
   second visit in a new context;
2. page switch: a click on each page link -> that page's title shown, script idle (two rounds:
   the first visit of a page in a session and a repeat);
3. one user: upload -> the answer (a heading with the file name, script idle), for a few images;
4. N students at once: N browser contexts, each uploads a different image at the same moment
   (every upload goes out before any answer is awaited); time from each upload to its answer,
   taken in that page by a watcher installed before the upload;
5. memory: the server's RSS after ``--baseline`` and after ``--uploads`` sequential uploads of
   distinct images in one session (each upload replaces the previous one, as a student trying one
   garment after another), and the growth in between.

The images are Fashion-MNIST test images encoded as PNG, each used once. The browser runs on the
same CPU as the server, as a classroom's laptops do not: absolute times include its work.
Benchmarks report; this one never fails on timing. A wait that runs past ``--timeout`` counts as
unanswered. It exits non-zero only when it could not run (no server, no browser, no images) or a
phase broke for a reason other than time.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drnets.argtypes import non_negative_int, positive_int

from .common import ROOT, cpu_model
from .protocol_client import ProtocolStudent

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1366, "height": 1200}
STARTUP_SECONDS = 240  # a cold start imports torch, plotly and streamlit; slow on a loaded 2-core machine
SINGLE_UPLOADS = 5  # "a few different images" for the one-user upload time (its median)
SWITCH_ROUNDS = 2  # round 1: a page's first visit in the session (cold caches); round 2: a repeat
PAGES = ("Attributions", "Data-set explorer", "How a DRNet works", "Inspect an image")  # link text = page title
ANSWER = "DRNet FLOPs"  # the metric every answered Inspect page shows
HELD_CHART = "Drawing the chart…"  # app.ui.HELD_CHART: a chart the session's first run held back
RSS_EVERY = 50  # RSS is also sampled every this many uploads, for the curve
GIVE_UP_AFTER = 3  # consecutive unanswered uploads that end the memory phase (the page is stuck)
POLL_MS = 50  # how often the browser checks whether a page is answered

UPLOADER = '[data-testid="stFileUploaderDropzoneInput"]'  # Streamlit's own test id, wherever the uploader sits
DELETE = '[data-testid="stFileUploader"] [data-testid="stFileChipDeleteBtn"] button'
# Is the page answered? The script is idle and, by kind: a metric with this label is shown
# ("metric"), that and Inspect's charts drawn, none held back ("complete": the held-back charts' run
# starts just after the first run ends, so at least one chart must be there), a heading containing
# this text is shown ("heading"), or none is ("no-heading").
READY_JS = """([kind, text]) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (kind === 'metric' || kind === 'complete') {
    const shown = [...document.querySelectorAll('[data-testid="stMetric"]')].some(m => m.innerText.includes(text));
    if (kind === 'metric' || !shown) return shown;
    const held = [...document.querySelectorAll('[data-testid="stCaptionContainer"]')].some(c => c.innerText.includes(HELD));
    const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
    return !held && charts.length > 0 && charts.every(c => c.querySelector('.main-svg'));
  }
  const heading = [...document.querySelectorAll('h1, h2, h3, h4, h5, h6')].some(h => h.innerText.includes(text));
  return kind === 'no-heading' ? !heading : heading;
}""".replace("HELD", json.dumps(HELD_CHART))
# Installed in a context before its first page loads: stores Date.now() when the answer's metric first
# enters the page. A MutationObserver runs in the same task as the render that added it, so a script
# the browser parses afterwards (the charts' Plotly) does not delay the reading, as it delays polls.
SHOWN_JS = """(() => {
  window.__drnetsShownAt = null;
  const observer = new MutationObserver(() => {
    const metrics = document.querySelectorAll('[data-testid="stMetric"]');
    if ([...metrics].some(m => m.textContent.includes(ANSWER_TEXT))) {
      window.__drnetsShownAt = Date.now();
      observer.disconnect();
    }
  });
  observer.observe(document, {subtree: true, childList: true, characterData: true});
})();""".replace("ANSWER_TEXT", json.dumps(ANSWER))
# Installed in a page just before its upload: stores Date.now() when the page is first answered, so
# N pages can be read one after another without the reading order adding to their times.
WATCH_JS = f"""([kind, text]) => {{
  const ready = {READY_JS};
  window.__drnetsAnsweredAt = null;
  const timer = setInterval(() => {{
    if (ready([kind, text])) {{ window.__drnetsAnsweredAt = Date.now(); clearInterval(timer); }}
  }}, {POLL_MS});
}}"""


@dataclass(frozen=True)
class Goal:
    """One target of issue 20, compared with one headline number."""

    key: str  # the headline key it reads
    label: str
    target: float | None  # None: a yes/no goal (the value must be True)
    unit: str = "s"


GOALS = (
    Goal("first_page_s", "first page on a fresh server: the answer on screen", 3.0),
    Goal("page_switch_max_s", "page switch (slowest)", 1.0),
    Goal("upload_median_s", "one user: upload -> answer (median)", 1.0),
    Goal("students_8_median_s", "8 students at once: upload -> answer (median)", 5.0),
    Goal("students_30_all_answered", "30 students at once: all answered", None, ""),
    Goal("students_30_median_s", "30 students at once: upload -> answer (median)", 10.0),
    Goal("light_8_median_s", "8 protocol clients at once: median", 5.0),
    Goal("light_30_all_answered", "30 protocol clients at once: all answered", None, ""),
    Goal("light_30_median_s", "30 protocol clients at once: median", 10.0),
    Goal("rss_growth_mb", "server RSS growth, baseline -> last upload", 150.0, "MB"),
)


# ---- the pure parts: arguments, summaries, goals ----


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.classroom", description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=positive_int, nargs="*", default=[8, 30], metavar="N",
                        help="class sizes to try, one after another (default: 8 30; none: skip)")  # fmt: skip
    parser.add_argument("--uploads", type=non_negative_int, default=500,
                        help="sequential uploads in one session for the memory phase (default 500; 0: skip)")  # fmt: skip
    parser.add_argument("--light", type=positive_int, nargs="*", default=[8, 30], metavar="N",
                        help="class sizes for students without a browser (bench.protocol_client), uploading at "
                        "once from threads (default: 8 30; none: skip)")  # fmt: skip
    parser.add_argument("--baseline", type=positive_int, default=50,
                        help="uploads after which the baseline RSS is read (default 50)")  # fmt: skip
    parser.add_argument("--timeout", type=positive_int, default=180,
                        help="seconds one wait may take before it counts as unanswered (default 180)")  # fmt: skip
    parser.add_argument("--chromium", default=CHROMIUM, help=f"the Chromium binary (default {CHROMIUM})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return parser.parse_args(argv)


def baseline_at(uploads: int, baseline: int) -> int:
    """The upload count whose RSS is the baseline: ``baseline``, or half the run when the run is shorter."""
    return baseline if uploads > baseline else max(1, uploads // 2)


def rss_points(uploads: int, baseline: int, every: int = RSS_EVERY) -> list[int]:
    """The upload counts after which the server's RSS is read: the baseline, every ``every``, the last."""
    if uploads < 1:
        return []
    return sorted({baseline_at(uploads, baseline), uploads, *range(every, uploads + 1, every)})


RUN_LOG = re.compile(r"page '(?P<page>[^']+)' ran in (?P<ms>\d+) ms")  # app/main.py logs every page run


def server_runs(log_text: str) -> dict[str, Any]:
    """The server's own time per page run (app/main.py logs it), without the browser's share."""
    ms = [int(m["ms"]) for m in RUN_LOG.finditer(log_text)]
    return {
        "runs": len(ms),
        "median_ms": statistics.median(ms) if ms else None,
        "max_ms": max(ms) if ms else None,
        "total_s": sum(ms) / 1000,
    }


def summarize(seconds: Sequence[float | None]) -> dict[str, Any]:
    """Answered count, median and max of some waits; an unanswered wait (None) counts as endless.

    So the median is None when half or more went unanswered, and the max is None when any did;
    with no waits at all nothing was answered.
    """
    ordered = sorted(seconds, key=lambda s: math.inf if s is None else s)
    answered = [s for s in ordered if s is not None]
    median = None
    if ordered:
        middle = ordered[(len(ordered) - 1) // 2 : len(ordered) // 2 + 1]
        median = None if None in middle else statistics.fmean(middle)
    return {
        "total": len(ordered),
        "answered": len(answered),
        "all_answered": bool(ordered) and len(answered) == len(ordered),
        "median_s": median,
        "max_s": answered[-1] if answered and len(answered) == len(ordered) else None,
    }


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers the goals read, flat. A phase that did not run leaves its keys out; one that ran
    but got no answer (or no reading) gives None, which fails its goal."""
    out: dict[str, Any] = {}
    if "first_page" in report:
        out["first_page_s"] = report["first_page"]["first_s"]
    if "page_switch" in report:
        out["page_switch_max_s"] = report["page_switch"]["max_s"]
    if "upload" in report:
        out["upload_median_s"] = report["upload"]["median_s"]
    for row in report.get("students", []):
        out[f"students_{row['n']}_all_answered"] = row["all_answered"]
        out[f"students_{row['n']}_median_s"] = row["median_s"]
    for row in report.get("light", []):
        out[f"light_{row['n']}_all_answered"] = row["all_answered"]
        out[f"light_{row['n']}_median_s"] = row["median_s"]
    if "memory" in report:
        out["rss_growth_mb"] = report["memory"]["growth_mb"]
    return out


def goals(numbers: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal with its measured value and whether it was met (None: not measured).

    A key that is present with a None value was measured and failed: e.g. a median over
    students of whom half got no answer.
    """
    out = []
    for goal in GOALS:
        value = numbers.get(goal.key)
        if goal.key not in numbers:
            met = None
        elif goal.target is None:
            met = value is True
        else:
            met = value is not None and value <= goal.target
        target = "all" if goal.target is None else f"<= {goal.target:g} {goal.unit}".rstrip()
        out.append({"metric": goal.key, "label": goal.label, "target": target, "value": value, "met": met})
    return out


def rss_mb(pid: int, proc: Path = Path("/proc")) -> float | None:
    """Resident memory of a process and its descendants in MB (VmRSS of /proc/PID/status); None when gone."""
    total_kb, seen, todo = 0, set(), [pid]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            status = (proc / str(current) / "status").read_text()
        except OSError:
            if current == pid:
                return None
            continue
        total_kb += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        for children in (proc / str(current) / "task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                todo += [int(child) for child in children.read_text().split()]
    return total_kb / 1024


# ---- the machine, the images, the server ----


def machine() -> dict[str, Any]:
    """Where the numbers come from; read before the server starts, so its own start-up does not count."""
    cores = os.cpu_count() or 1
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "load_average": load,  # 1, 5, 15 minutes
        "loaded": bool(load and load[0] > 0.5 * cores),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }


def png_images(count: int) -> list[bytes]:
    """``count`` distinct Fashion-MNIST test images as PNG files (duplicates in the set are skipped)."""
    from PIL import Image

    from drnets.data import DataError, load_dataset

    try:
        pixels = load_dataset("fashion-mnist", "test").images.numpy()
    except (DataError, OSError) as err:
        raise SystemExit(
            f"bench.classroom: no Fashion-MNIST test images ({err}); `make system-deps` installs them"
        ) from None
    images, seen = [], set()
    for image in pixels:
        out = io.BytesIO()
        Image.fromarray(image[..., 0]).save(out, "PNG")
        data = out.getvalue()
        if data not in seen:
            seen.add(data)
            images.append(data)
            if len(images) == count:
                return images
    raise SystemExit(f"bench.classroom: {count} distinct images asked for, the test set has {len(images)}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"bench.classroom: the app exited with {self.process.returncode}:\n{self.log_tail()}")
            if healthy(self.port):
                return
            time.sleep(0.1)
        raise SystemExit(f"bench.classroom: no healthy app after {STARTUP_SECONDS} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def shipped_models_env() -> dict[str, str]:
    """This environment without DRNETS_MODELS_DIR: the server offers the shipped models first."""
    return {k: v for k, v in os.environ.items() if k != "DRNETS_MODELS_DIR"}


@contextlib.contextmanager
def started_server(folder: Path, env: Mapping[str, str]) -> Iterator[Server]:
    """``python -m app.launch --server.port <free port>``, the README's way, in ``env``; its log in ``folder``.
    tests/appkit.py starts the tests' server with it too."""
    port, log = free_port(), folder / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.launch", "--server.port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield Server(process, port, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---- the browser side ----


class Phase:
    """What every phase uses: the browser, the server, the wait limit and one image per upload."""

    def __init__(self, browser: Any, server: Server, timeout_s: float, images: list[bytes]) -> None:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        self.browser, self.server, self.timeout_s = browser, server, timeout_s
        self.images = iter(images)
        self.timeout_error = PlaywrightTimeout

    def new_page(self) -> tuple[Any, Any]:
        context = self.browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(self.timeout_s * 1000)
        return context, page

    def wait(self, page: Any, kind: str, text: str, timeout_s: float | None = None) -> bool:
        """Wait until ``READY_JS`` holds; False when it did not within the limit."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            page.wait_for_function(READY_JS, arg=[kind, text], polling=POLL_MS, timeout=max(timeout, 0.001) * 1000)
        except self.timeout_error:
            return False
        return True

    def open_app(self, page: Any) -> float | None:
        """Seconds from asking for the app to its first page answered; None when it did not come."""
        started = time.monotonic()
        page.goto(self.server.url, wait_until="commit")
        return time.monotonic() - started if self.wait(page, "metric", ANSWER) else None

    def upload(self, page: Any, name: str) -> None:
        file = {"name": name, "mimeType": "image/png", "buffer": next(self.images)}
        page.locator(UPLOADER).set_input_files([file])

    def clear_uploads(self, page: Any) -> None:
        """Remove the files in the uploader (the chips' delete buttons), so the next upload is the only one."""
        buttons = page.locator(DELETE)
        for _ in range(buttons.count()):
            buttons.first.click()

    def timed_upload(self, page: Any, name: str) -> float | None:
        started = time.monotonic()
        self.upload(page, name)
        return time.monotonic() - started if self.wait(page, "heading", name) else None


def first_page(phase: Phase, healthy_at: float) -> dict[str, Any]:
    """Health check OK -> the answer on screen, and -> the whole page done (charts drawn, script idle);
    then a second visit in a new context, timed from asking for the page."""
    healthy_ms = (time.time() - (time.monotonic() - healthy_at)) * 1000  # on the wall clock the browser reads
    times = {}
    for visit in ("first", "second"):
        context, page = phase.new_page()
        try:
            page.add_init_script(SHOWN_JS)
            since_ms = healthy_ms if visit == "first" else time.time() * 1000
            page.goto(phase.server.url, wait_until="commit")
            done = phase.wait(page, "complete", ANSWER)
            done_ms = time.time() * 1000
            shown_ms = page.evaluate("() => window.__drnetsShownAt")
            times[f"{visit}_s"] = (shown_ms - since_ms) / 1000 if shown_ms else None
            times[f"{visit}_complete_s"] = (done_ms - since_ms) / 1000 if done else None
        finally:
            context.close()
    return times


def one_user(phase: Phase) -> dict[str, Any]:
    """One session: open the app and let its first page complete (the held-back charts in, so the
    first switch does not also time the first page's end), switch pages, then upload a few images one
    at a time."""
    context, page = phase.new_page()
    try:
        phase.open_app(page)
        phase.wait(page, "complete", ANSWER)
        return {"page_switch": page_switches(phase, page), "upload": single_uploads(phase, page)}
    finally:
        context.close()


def page_switches(phase: Phase, page: Any) -> dict[str, Any]:
    """Click each page link, SWITCH_ROUNDS times round; the page's title shown and the script idle end a switch."""
    rows = []
    for round_ in range(1, SWITCH_ROUNDS + 1):
        for title in PAGES:
            started = time.monotonic()
            page.get_by_role("link", name=title, exact=True).click()
            seconds = time.monotonic() - started if phase.wait(page, "heading", title) else None
            rows.append({"page": title, "round": round_, "seconds": seconds})
    return {"rows": rows, **summarize([r["seconds"] for r in rows])}


def single_uploads(phase: Phase, page: Any, count: int = SINGLE_UPLOADS) -> dict[str, Any]:
    """One image at a time: each upload replaces the previous one and is timed from an idle page."""
    seconds = []
    previous = None
    for i in range(count):
        if previous is not None:
            phase.clear_uploads(page)
            phase.wait(page, "no-heading", previous)
        previous = f"single-{i}.png"
        seconds.append(phase.timed_upload(page, previous))
    return {"seconds": seconds, **summarize(seconds)}


def students(phase: Phase, n: int) -> dict[str, Any]:
    """N contexts open the app, then all upload a different image at once; each page times its own answer."""
    opened = [phase.new_page() for _ in range(n)]
    pages = [page for _, page in opened]
    try:
        started = time.monotonic()
        for page in pages:
            page.goto(phase.server.url, wait_until="commit")
        deadline = started + phase.timeout_s
        ready = [phase.wait(page, "metric", ANSWER, deadline - time.monotonic()) for page in pages]
        opened_s = time.monotonic() - started
        names = [f"student{n}-{i}.png" for i in range(n)]
        for page, name, ok in zip(pages, names, ready, strict=True):
            if ok:
                page.evaluate(WATCH_JS, ["heading", name])
        upload_ms: list[float | None] = []
        for page, name, ok in zip(pages, names, ready, strict=True):  # every upload goes out before any wait
            upload_ms.append(time.time() * 1000 if ok else None)
            if ok:
                phase.upload(page, name)
        sent = [t for t in upload_ms if t is not None]
        deadline = time.monotonic() + phase.timeout_s
        seconds: list[float | None] = []
        for page, sent_ms in zip(pages, upload_ms, strict=True):
            answered_ms = None
            if sent_ms is not None:
                with contextlib.suppress(phase.timeout_error):
                    remaining = max(deadline - time.monotonic(), 0.001)
                    handle = page.wait_for_function(
                        "() => window.__drnetsAnsweredAt", polling=POLL_MS, timeout=remaining * 1000
                    )
                    answered_ms = handle.json_value()
            seconds.append(None if answered_ms is None else (answered_ms - sent_ms) / 1000)
        return {
            "n": n,
            "opened_s": opened_s,
            "opened": sum(ready),
            "uploads_spread_s": (max(sent) - min(sent)) / 1000 if sent else None,
            "seconds": seconds,
            **summarize(seconds),
        }
    finally:
        for context, _ in opened:
            context.close()


def light_students(port: int, n: int, images: Iterator[bytes], timeout_s: float) -> dict[str, Any]:
    """N protocol clients open the app, then upload a different image each at the same moment (threads
    released by one barrier); each times its own upload -> finished rerun with its heading and cost."""
    clients = [ProtocolStudent(port, timeout_s) for _ in range(n)]
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda client: client.open_page(), clients))
            opened_s = time.monotonic() - started
            files = [(f"light{n}-{i}.png", next(images)) for i in range(n)]
            barrier = threading.Barrier(n)

            def answer(i: int) -> float | None:
                name, data = files[i]
                barrier.wait()
                try:
                    run = clients[i].upload(name, data)
                except (OSError, TimeoutError, RuntimeError):
                    return None
                return run.seconds if name in run.headings and ANSWER in run.metrics else None

            seconds = list(pool.map(answer, range(n)))
    finally:
        for client in clients:
            client.close()
    return {"n": n, "opened_s": opened_s, "seconds": seconds, **summarize(seconds)}


def memory(phase: Phase, uploads: int, baseline: int) -> dict[str, Any]:
    """Sequential uploads of distinct images in one session; the server's RSS at the points of ``rss_points``."""
    pid = phase.server.process.pid  # app.launch execs Streamlit: its pid is the server's
    points = set(rss_points(uploads, baseline))
    context, page = phase.new_page()
    rss = [{"uploads": 0, "rss_mb": None}]
    seconds: list[float | None] = []
    notes = []
    try:
        phase.open_app(page)
        rss[0]["rss_mb"] = rss_mb(pid)
        unanswered_in_a_row = 0
        for i in range(1, uploads + 1):
            phase.clear_uploads(page)
            seconds.append(phase.timed_upload(page, f"upload-{i}.png"))
            unanswered_in_a_row = unanswered_in_a_row + 1 if seconds[-1] is None else 0
            if i in points:
                rss.append({"uploads": i, "rss_mb": rss_mb(pid)})
            if unanswered_in_a_row >= GIVE_UP_AFTER:
                notes.append(f"memory phase stopped after {i} uploads: {GIVE_UP_AFTER} in a row went unanswered")
                break
    finally:
        context.close()
    by_count = {row["uploads"]: row["rss_mb"] for row in rss}
    first, last = by_count.get(baseline_at(uploads, baseline)), by_count.get(uploads)
    return {
        "uploads": uploads,
        "baseline_uploads": baseline_at(uploads, baseline),
        "rss": rss,
        "growth_mb": last - first if first is not None and last is not None else None,
        "upload": summarize(seconds),
        "notes": notes,
    }


# ---- the run ----


def run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    if not Path(args.chromium).exists():
        raise SystemExit(f"bench.classroom: {args.chromium} is missing; `make system-deps` installs Debian's chromium")
    info = machine()
    images = png_images(SINGLE_UPLOADS + sum(args.students) + sum(args.light) + args.uploads)
    report: dict[str, Any] = {"command": "python -m bench.classroom " + " ".join(sys.argv[1:]), "machine": info}
    errors: dict[str, str] = {}

    def phase_run(key: str, measure: Callable[[], dict[str, Any]]) -> None:
        """A phase that breaks for a reason other than time is reported as broken; the others still run.
        The server's own time for the page runs of the phase comes from its log."""
        start = server.log.stat().st_size
        try:
            report.update(measure())
        except PlaywrightError as err:
            errors[key] = (str(err).splitlines() or [type(err).__name__])[0]
        with open(server.log, errors="replace") as log:
            log.seek(start)
            report.setdefault("server_runs", {})[key] = server_runs(log.read())

    with (
        tempfile.TemporaryDirectory(prefix="drnets-classroom-") as tmp,
        started_server(Path(tmp), shipped_models_env()) as server,
    ):
        spawned = time.monotonic()
        with sync_playwright() as playwright:
            try:
                browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            except PlaywrightError as err:
                raise SystemExit(f"bench.classroom: Chromium did not start: {err}") from None
            server.wait_healthy()
            healthy_at = time.monotonic()
            report["server"] = {
                "url": server.url,
                "models": "assets/models (shipped)",
                "startup_s": healthy_at - spawned,
                "rss_mb_healthy": rss_mb(server.process.pid),
            }
            phase = Phase(browser, server, args.timeout, images)
            phase_run("first_page", lambda: {"first_page": first_page(phase, healthy_at)})
            phase_run("one_user", lambda: one_user(phase))
            report["students"] = []
            for n in args.students:
                phase_run(f"students_{n}", lambda n=n: {"students": [*report["students"], students(phase, n)]})
            report["light"] = []
            for n in args.light:
                phase_run(
                    f"light_{n}",
                    lambda n=n: {
                        "light": [*report["light"], light_students(server.port, n, phase.images, args.timeout)]
                    },
                )
            report["server"]["rss_mb_after_students"] = rss_mb(server.process.pid)
            if args.uploads:
                phase_run("memory", lambda: {"memory": memory(phase, args.uploads, args.baseline)})
            browser.close()
        report["server"]["log_tail"] = server.log_tail(10)
    numbers = headline(report)
    notes = []
    if info["loaded"]:
        notes.append(
            f"the machine was loaded (1-minute load average {info['load_average'][0]:.1f} on {info['cores']} cores) "
            "before the server started: times are inflated"
        )
    notes.append("the browser shares the server's CPU: times include Chromium's work for every open page")
    notes += (report.get("memory") or {}).get("notes", [])
    notes += [f"{key} broke: {message}" for key, message in errors.items()]
    report.update(headline=numbers, goals=goals(numbers), notes=notes, errors=errors)
    return report


# ---- the report ----


def _s(value: float | None) -> str:
    return "unanswered" if value is None else f"{value:.2f} s"


def show(report: dict[str, Any]) -> None:
    info, server = report["machine"], report["server"]
    load = ", ".join(f"{x:.2f}" for x in info["load_average"]) if info["load_average"] else "?"
    print("== drnets classroom benchmark: the app under a class of browser sessions")
    print(f"machine: {info['cpu']}, {info['cores']} cores, load average {load} (1/5/15 min), {info['date_utc']} UTC")
    print(f"server: {server['url']}, {server['models']}, OMP_NUM_THREADS={info['omp_num_threads'] or 'unset'}, "
          f"healthy after {server['startup_s']:.1f} s")  # fmt: skip
    for note in report["notes"]:
        print(f"NOTE: {note}")
    if "first_page" in report:
        first = report["first_page"]
        print('\n== first page (the answer: "DRNet FLOPs" shown; complete: charts drawn, script idle)')
        print(
            f"  health check OK -> first visit answered   {_s(first['first_s'])}   complete {_s(first.get('first_complete_s'))}"
        )
        print(
            f"  second visit, new context                 {_s(first['second_s'])}   complete {_s(first.get('second_complete_s'))}"
        )
    if "page_switch" in report:
        switch = report["page_switch"]
        print("\n== page switch (click the link -> title shown, script idle)")
        for row in switch["rows"]:
            print(f"  round {row['round']}  {row['page']:20s} {_s(row['seconds'])}")
        print(f"  median {_s(switch['median_s'])}, max {_s(switch['max_s'])}")
    if "upload" in report:
        upload = report["upload"]
        print("\n== one user: upload -> answer (heading with the file name, script idle)")
        print("  " + ", ".join(_s(s) for s in upload["seconds"]) + f"; median {_s(upload['median_s'])}")
    if report.get("students"):
        print("\n== students at once, one headless Chromium (each uploads a different image)")
        print(f"  {'N':>3s} {'pages open':>11s} {'uploads out':>12s} {'answered':>9s} {'median':>11s} {'max':>11s}")
        for row in report["students"]:
            spread = "-" if row["uploads_spread_s"] is None else f"{row['uploads_spread_s']:.2f} s"
            print(f"  {row['n']:3d} {row['opened_s']:9.1f} s {spread:>12s} {row['answered']:4d}/{row['total']:<4d} "
                  f"{_s(row['median_s']):>11s} {_s(row['max_s']):>11s}")  # fmt: skip
    if report.get("light"):
        print("\n== students without a browser (bench.protocol_client), uploading at once from threads")
        print(f"  {'N':>3s} {'pages open':>11s} {'answered':>9s} {'median':>11s} {'max':>11s}")
        for row in report["light"]:
            print(f"  {row['n']:3d} {row['opened_s']:9.1f} s {row['answered']:4d}/{row['total']:<4d} "
                  f"{_s(row['median_s']):>11s} {_s(row['max_s']):>11s}")  # fmt: skip
    if "memory" in report:
        mem = report["memory"]
        print(f"\n== memory: server RSS over {mem['uploads']} sequential uploads in one session")
        for row in mem["rss"]:
            value = "?" if row["rss_mb"] is None else f"{row['rss_mb']:.0f} MB"
            print(f"  after {row['uploads']:4d} uploads  {value}")
        growth = "?" if mem["growth_mb"] is None else f"{mem['growth_mb']:+.0f} MB"
        print(f"  growth {mem['baseline_uploads']} -> {mem['uploads']} uploads: {growth}; "
              f"upload -> answer median {_s(mem['upload']['median_s'])}, "
              f"{mem['upload']['answered']}/{mem['upload']['total']} answered")  # fmt: skip
    if report.get("server_runs"):
        print("\n== the server's own time per page run (its log; no browser in it)")
        print(f"  {'phase':14s} {'runs':>5s} {'median':>9s} {'max':>9s} {'total':>9s}")
        for key, row in report["server_runs"].items():
            median = "-" if row["median_ms"] is None else f"{row['median_ms']:.0f} ms"
            most = "-" if row["max_ms"] is None else f"{row['max_ms']:.0f} ms"
            print(f"  {key:14s} {row['runs']:5d} {median:>9s} {most:>9s} {row['total_s']:7.1f} s")
    print("\n== goals (issue 20)")
    for goal in report["goals"]:
        value = goal["value"]
        if isinstance(value, bool):
            shown = "yes" if value else "no"
        elif value is None:
            shown = "-" if goal["met"] is None else "unanswered"
        else:
            shown = f"{value:.3g}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[goal["met"]]
        print(f"  {goal['label']:48s} {goal['target']:>10s}  measured {shown:>10s}  {verdict}")
    for key, message in report["errors"].items():
        print(f"ERROR in {key}: {message}")
    if report["errors"]:
        print("server log (last lines):\n" + report["server"]["log_tail"])


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        show(report)
    if report["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
