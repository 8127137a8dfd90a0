"""Drive the distribution's headless Chromium over the DevTools protocol (CDP), for the report's browser tests.

No driver download and no browser library: Chromium is started with ``--remote-debugging-port=0`` and a fresh
profile, and spoken to over one websocket (``websocket-client``, a dev extra). The page's console errors,
uncaught exceptions and every request it makes are recorded.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--remote-debugging-port=0"]


def find_chromium() -> str | None:
    """The Chromium binary (``$CHROMIUM``, else ``chromium`` / ``chromium-browser`` / ``google-chrome`` on PATH)."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page; ``with Browser() as b: b.open(path); b.eval("1+1")``."""

    def __init__(self, binary: str | None = None, width: int = 1280, height: int = 900, timeout: float = 60.0):
        import websocket  # websocket-client (dev extra)

        self.binary = binary or find_chromium()
        if self.binary is None:
            raise FileNotFoundError("no Chromium found; install Debian's chromium or set $CHROMIUM")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="rsmi-chromium-")
        self.proc = subprocess.Popen([self.binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = self._devtools_url()
        self.ws = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _devtools_url(self) -> str:
        deadline = time.monotonic() + self.timeout
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            seen.append(line)
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                return m.group(1)
        self.close()
        raise RuntimeError("Chromium did not start: " + "".join(seen[-10:]))

    def send(self, method: str, session: bool = False, **params) -> dict:
        """Send one CDP command (to the page when ``session``) and return its result; events are kept."""
        msg_id = next(self.ids)
        msg = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        for ev in self.events:
            if ev["method"] == method:
                return ev
        while time.monotonic() < deadline:
            reply = json.loads(self.ws.recv())
            if "method" in reply:
                self.events.append(reply)
                if reply["method"] == method:
                    return reply
        raise TimeoutError(f"no {method} within {timeout or self.timeout} s")

    def open(self, path: str | Path) -> None:
        """Load a local file and wait for its load event."""
        self.events.clear()
        self.send("Page.navigate", session=True, url=Path(path).resolve().as_uri())
        self.wait_for("Page.loadEventFired")

    def eval(self, expression: str):
        """Evaluate JavaScript in the page and return its value (exceptions raise)."""
        res = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression!r} raised {res['exceptionDetails']}")
        return res["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        out = []
        for ev in self.events:
            p = ev.get("params", {})
            if ev["method"] == "Runtime.exceptionThrown":
                out.append(str(p.get("exceptionDetails")))
            elif ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(str(p.get("args")))
            elif ev["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(str(p["entry"]))
        return out

    def requests(self) -> list[str]:
        """URLs of every request the page made."""
        return [ev["params"]["request"]["url"] for ev in self.events if ev["method"] == "Network.requestWillBeSent"]

    def screenshot(self, full_page: bool = False) -> bytes:
        res = self.send("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=full_page)
        return base64.b64decode(res["data"])

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.rsmi_nn.app.headless REPORT OUT.png [--search WORD] [--hash '#v1-0']``: a screenshot
    of a report (how docs/figures/report_dashboard.png is made from runs/default/report.html)."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("report")
    p.add_argument("out")
    p.add_argument("--search", default="")
    p.add_argument("--hash", default="")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=1000)
    args = p.parse_args(argv)
    with Browser(width=args.width, height=args.height) as b:
        b.open(args.report)
        if args.search:
            b.eval(f"(() => {{ const s = document.getElementById('search'); s.value = {json.dumps(args.search)};"
                   " s.dispatchEvent(new Event('input')); })()")
        if args.hash:
            b.eval(f"location.hash = {json.dumps(args.hash)}")
        else:
            b.eval("document.getElementById('variables').scrollIntoView()")
        time.sleep(0.5)
        Path(args.out).write_bytes(b.screenshot())
        if b.errors():
            raise SystemExit(f"the page logged errors: {b.errors()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
