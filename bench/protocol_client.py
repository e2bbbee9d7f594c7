"""A student without a browser: Streamlit's own websocket protocol, spoken as its frontend speaks it.

bench/classroom.py measures the app under a class of headless Chromium pages, but on a 2-core machine
those pages need the CPU the server needs. This client opens a session, uploads a file the way the
uploader does (PUT with the XSRF token, then a rerun with the uploader's widget state) and waits for
the rerun to finish, drawing nothing: a lighter load, so what it times is the server's answer.
"""

from __future__ import annotations

import http.client
import time
import urllib.request
import uuid
from dataclasses import dataclass, field

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from websockets.sync.client import ClientConnection, connect

UPLOADER_LABEL = "…or your own photos of garments"  # app/picker.py's uploader


@dataclass
class Run:
    """What one rerun sent back: the headings and metric values the page showed, and how long it took."""

    seconds: float
    headings: list[str] = field(default_factory=list)
    metrics: dict[str, str] = field(default_factory=dict)
    uploader_id: str | None = None


class ProtocolStudent:
    """One browser session's worth of protocol, without the browser."""

    def __init__(self, port: int, timeout_s: float = 180) -> None:
        self.port, self.timeout_s = port, timeout_s
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=timeout_s) as response:
            self.cookie = response.headers["Set-Cookie"].split(";")[0]  # _streamlit_xsrf=<token>
        self.token = self.cookie.split("=", 1)[1]
        self.ws: ClientConnection = connect(
            f"ws://127.0.0.1:{port}/_stcore/stream",
            subprotocols=["streamlit", self.token],
            additional_headers={"Cookie": self.cookie, "Origin": f"http://127.0.0.1:{port}"},
            open_timeout=timeout_s,
        )
        self.session_id = ""
        self.uploader_id: str | None = None

    def close(self) -> None:
        self.ws.close()

    def open_page(self) -> Run:
        """The first run of a visit, as the frontend asks for it."""
        return self.rerun(BackMsg())

    def upload(self, name: str, data: bytes) -> Run:
        """PUT the file, then rerun with the uploader holding it; seconds count from the PUT."""
        if self.uploader_id is None:
            raise RuntimeError("no uploader on the page: open it first")
        started = time.perf_counter()
        file_id = uuid.uuid4().hex
        self._put(file_id, name, data)
        message = BackMsg()
        state = message.rerun_script.widget_states.widgets.add()
        state.id = self.uploader_id
        info = state.file_uploader_state_value.uploaded_file_info.add()
        info.file_id, info.name, info.size = file_id, name, len(data)
        info.file_urls.file_id = file_id
        info.file_urls.upload_url = f"/_stcore/upload_file/{self.session_id}/{file_id}"
        info.file_urls.delete_url = info.file_urls.upload_url
        run = self.rerun(message)
        run.seconds = time.perf_counter() - started
        return run

    def rerun(self, message: BackMsg) -> Run:
        """Send a rerun and read until the script finishes, through any reruns it asks for itself."""
        message.rerun_script.query_string = ""
        started = time.perf_counter()
        self.ws.send(message.SerializeToString())
        run = Run(0.0)
        while True:
            reply = ForwardMsg()
            reply.ParseFromString(self.ws.recv(timeout=self.timeout_s))
            kind = reply.WhichOneof("type")
            if kind == "new_session":
                self.session_id = reply.new_session.initialize.session_id
            elif kind == "delta" and reply.delta.WhichOneof("type") == "new_element":
                self._read(reply.delta.new_element, run)
            elif kind == "script_finished" and reply.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                break  # a run that ends in st.rerun (a session's first, app.ui.draw_held_charts) goes on
        run.seconds = time.perf_counter() - started
        self.uploader_id = run.uploader_id or self.uploader_id
        return run

    @staticmethod
    def _read(element: object, run: Run) -> None:
        kind = element.WhichOneof("type")
        if kind == "heading":
            run.headings.append(element.heading.body)
        elif kind == "metric":
            run.metrics[element.metric.label] = element.metric.body
        elif kind == "file_uploader" and element.file_uploader.label == UPLOADER_LABEL:
            run.uploader_id = element.file_uploader.id

    def _put(self, file_id: str, name: str, data: bytes) -> None:
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
        try:
            connection.request(
                "PUT",
                f"/_stcore/upload_file/{self.session_id}/{file_id}",
                body=body,
                headers={
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                    "Cookie": self.cookie,
                    "X-Xsrftoken": self.token,
                },
            )
            status = connection.getresponse().status
        finally:
            connection.close()
        if status != 204:
            raise RuntimeError(f"upload of {name} refused with HTTP {status}")
