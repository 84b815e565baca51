"""A minimal driver for headless Chromium over the DevTools protocol (websocket-client), for the site's browser test.

``Browser.start()`` launches Debian's ``chromium`` (``--headless --remote-debugging-port=0``), reads the DevTools
port it chose, and attaches to its page. The page object collects console errors, uncaught exceptions and failed
loads (``Log.entryAdded`` at level error) while it navigates, evaluates script and takes screenshots.

Run directly to screenshot a page: ``python tests/chromium_cdp.py PAGE.html OUT.png [--width 1280]
[--height 900] [--colors 128]``.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    explicit = os.environ.get("ZSQBENCH_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() or shutil.which(explicit) else None
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class CDPError(RuntimeError):
    pass


class Browser:
    def __init__(self, binary: str, width: int = 1280, height: int = 900, timeout: float = 30.0):
        self.binary, self.width, self.height, self.timeout = binary, width, height, timeout
        self.proc = None
        self.ws = None
        self.profile = None
        self._id = 0
        self.events: list[dict] = []

    # -- life cycle --
    def start(self) -> "Browser":
        import websocket  # websocket-client
        self.profile = tempfile.mkdtemp(prefix="zsq-chromium-")
        args = [self.binary, "--headless", "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
                "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", "--mute-audio", f"--window-size={self.width},{self.height}", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = self._devtools_port()
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5).read())
                page = next(t for t in targets if t.get("type") == "page")
                break
            except (OSError, StopIteration):
                if time.monotonic() > deadline:
                    raise CDPError("Chromium started but offers no page target") from None
                time.sleep(0.1)
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=self.timeout,
                                              suppress_origin=True)
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.set_width(self.width, self.height)
        return self

    def _devtools_port(self) -> int:
        deadline = time.monotonic() + self.timeout
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise CDPError(f"Chromium exited ({self.proc.returncode}): {' '.join(lines)[-500:]}")
                continue
            lines.append(line.strip())
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                # keep draining stderr so Chromium never blocks on a full pipe
                import threading
                threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
                return int(m.group(1))
        raise CDPError("Chromium did not print its DevTools port in time")

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.profile:
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False

    # -- protocol --
    def send(self, method: str, **params) -> dict:
        self._id += 1
        my_id = self._id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, name: str, timeout: float | None = None) -> dict:
        for i, e in enumerate(self.events):
            if e["method"] == name:
                return self.events.pop(i)
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == name:
                return msg
            if "method" in msg:
                self.events.append(msg)
        raise CDPError(f"no {name} within {timeout or self.timeout} s")

    # -- what a test needs --
    def set_width(self, width: int, height: int = 900) -> None:
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def open(self, url: str) -> None:
        self.events = [e for e in self.events if e["method"] != "Page.loadEventFired"]
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise CDPError(f"cannot open {url}: {result['errorText']}")
        self.wait_event("Page.loadEventFired")

    def eval(self, expression: str):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise CDPError(f"script failed: {r['exceptionDetails'].get('exception', {}).get('description')}")
        return r["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads seen so far."""
        self.send("Runtime.evaluate", expression="0")  # flush pending events into self.events
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif e["method"] == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}".strip())
        return out

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params = {"format": "png"}
        if full_page:
            size = self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1})
        data = self.send("Page.captureScreenshot", **params)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page")
    ap.add_argument("out")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--colors", type=int, default=0, help="quantize to this many colours (smaller PNG; Pillow)")
    a = ap.parse_args()
    binary = find_chromium()
    if not binary:
        raise SystemExit("no chromium found (apt-get install chromium, or set ZSQBENCH_CHROMIUM)")
    with Browser(binary, a.width, a.height) as b:
        b.open(Path(a.page).resolve().as_uri())
        b.screenshot(Path(a.out))
        errors = b.errors()
    if a.colors:
        from PIL import Image
        Image.open(a.out).convert("RGB").quantize(colors=a.colors).save(a.out, optimize=True)
    print(f"wrote {a.out}" + (f"; page errors: {errors}" if errors else ""))
