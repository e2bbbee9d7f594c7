"""The launcher turns streamlit_config.toml into flags, and a started server really has them in force."""

from __future__ import annotations

import http.client
import os
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import appkit
import pytest
from appkit import AppServer

from app import launch
from bench.classroom import STARTUP_SECONDS

MB = 1024 * 1024
# Session fixtures from appkit: one server (and one models folder) for test_launch and test_e2e.
app_server, app_models = appkit.app_server, appkit.app_models


def test_flags_from_a_config(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        "[server]\nheadless = true\nmaxUploadSize = 7\n[browser]\ngatherUsageStats = false\n"
        '[theme]\nbase = "light"\n[theme.sidebar]\nbackgroundColor = "#fff"\n[server.extra]\nlist = ["a", "b"]\n'
    )
    options = launch.resolve_options(["--server.port", "9", "--server.maxUploadSize=3"], config)
    flags = launch.build_command(options)[launch.build_command({}).index(str(launch.MAIN)) + 1 :]
    assert flags == [
        "--server.headless=true",
        "--server.maxUploadSize=3",  # the command line wins over the file
        "--server.extra.list=a",
        "--server.extra.list=b",
        "--browser.gatherUsageStats=false",
        "--theme.base=light",
        "--theme.sidebar.backgroundColor=#fff",
        "--server.port=9",
    ]
    assert launch.build_command(options)[:5] == [sys.executable, "-m", "app.serve", "run", str(launch.MAIN)]


@pytest.mark.parametrize("args", [["port"], ["--server.port"], ["--port", "1"], ["--server.port", "--x.y=1"]])
def test_bad_flags_are_refused_with_a_message(args: list[str]) -> None:
    with pytest.raises(launch.LaunchError, match="--"):
        launch.parse_overrides(args)
    with pytest.raises(SystemExit, match="app.launch: "):
        launch.main(args)


def test_broken_config_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(launch.LaunchError, match="missing"):
        launch.read_config(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("[server\nport = 1")
    with pytest.raises(launch.LaunchError, match="not valid TOML"):
        launch.read_config(tmp_path / "bad.toml")


def test_server_environment(tmp_path: Path) -> None:
    env = launch.server_env({"PYTHONPATH": "/elsewhere"}, ram_dir=tmp_path / "ram")
    assert env["PYTHONPATH"].split(os.pathsep) == [str(launch.ROOT), "/elsewhere"]
    assert env["TMPDIR"] == str(tmp_path / "ram") and (tmp_path / "ram").is_dir(), "spooled uploads go to RAM"
    assert launch.server_env({"TMPDIR": "/mine"}, ram_dir=tmp_path / "ram")["TMPDIR"] == "/mine"
    assert "TMPDIR" not in launch.server_env({}, ram_dir=tmp_path / "missing" / "ram")


def test_the_shipped_config_holds_the_server_settings() -> None:
    options = launch.read_config()
    assert options["server.enableXsrfProtection"] is True
    assert options["server.maxUploadSize"] == 20
    assert options["browser.gatherUsageStats"] is False
    assert options["client.showErrorDetails"] == "none"
    assert options["server.headless"] is True


# ---- a real server, started the README's way (appkit.app_server) ----


@contextmanager
def browser_session(port: int, cookie: str, token: str) -> Iterator[str]:
    """Open a session over the websocket as a browser does, and yield the id the server gives it."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    with connect(
        f"ws://127.0.0.1:{port}/_stcore/stream",
        subprotocols=["streamlit", token],
        additional_headers={"Cookie": cookie, "Origin": f"http://127.0.0.1:{port}"},
        open_timeout=60,
    ) as ws:
        request = BackMsg()
        request.rerun_script.query_string = ""
        ws.send(request.SerializeToString())
        while True:
            message = ForwardMsg()
            message.ParseFromString(ws.recv(timeout=STARTUP_SECONDS))
            if message.WhichOneof("type") == "new_session":
                yield message.new_session.initialize.session_id
                return


def put_file(port: int, session: str, size: int, cookie: str = "", token: str = "") -> int:
    """PUT an upload the way the browser does; for oversized files only the headers are sent."""
    boundary = "drnets-test"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.putrequest("PUT", f"/_stcore/upload_file/{session}/file{size}")
    connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    connection.putheader("Content-Length", str(len(head) + size + len(tail)))
    if cookie:
        connection.putheader("Cookie", cookie)
        connection.putheader("X-Xsrftoken", token)
    connection.endheaders()
    if size <= MB:
        connection.send(head + b"0" * size + tail)
    status = connection.getresponse().status
    connection.close()
    return status


def test_started_app_has_the_settings_in_force(app_server: AppServer) -> None:
    server = app_server.port
    with urllib.request.urlopen(f"http://127.0.0.1:{server}/_stcore/health", timeout=30) as response:
        assert response.read() == b"ok"
        cookie = response.headers["Set-Cookie"].split(";")[0]
    assert cookie.startswith("_streamlit_xsrf="), "XSRF protection hands out a token cookie"
    token = cookie.split("=", 1)[1]
    with browser_session(server, cookie, token) as session:
        assert put_file(server, session, 1000) == 403, "an upload without the XSRF token is refused"
        assert put_file(server, session, 1000, cookie, token) == 204
        assert put_file(server, session, 21 * MB, cookie, token) == 413, "maxUploadSize = 20 MB is enforced"
    if "TMPDIR" not in os.environ and launch.RAM_DIR.parent.is_dir():
        environ = Path(f"/proc/{app_server.pid}/environ").read_bytes().split(b"\0")
        assert f"TMPDIR={launch.RAM_DIR}".encode() in environ, "uploads spooled by Starlette stay in memory"


def test_students_without_a_browser_upload_at_once_and_get_their_own_answers(app_server: AppServer) -> None:
    """bench/classroom.py's lighter load: three protocol clients upload different images at the same
    moment; each rerun ends with its own file's heading and the cost the DRNet computes for it."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from app.sidebar import default_routing
    from app.ui import si
    from bench.protocol_client import ProtocolStudent
    from drnets.checkpoint import load_checkpoint
    from drnets.data import load_dataset

    files = []
    for i, pixels in enumerate(load_dataset("fashion-mnist", "test").images[10:13, ..., 0].numpy()):
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "PNG")
        files.append((f"student{i}.png", out.getvalue()))
    students = [ProtocolStudent(app_server.port) for _ in files]
    try:
        for student in students:
            assert student.open_page().uploader_id, "the page has the uploader"
        with ThreadPoolExecutor(len(files)) as pool:
            runs = list(pool.map(lambda pair: pair[0].upload(*pair[1]), zip(students, files, strict=True)))
    finally:
        for student in students:
            student.close()
    threshold = default_routing(load_checkpoint(app_server.models / "drnet").model)[0]  # a new session's
    for run, (name, data) in zip(runs, files, strict=True):
        reference = appkit.drnet_reference(app_server.models, data, threshold)
        assert name in run.headings
        assert run.metrics["DRNet FLOPs"] == si(reference.flops) and run.metrics["DRNet says"] == reference.answer
