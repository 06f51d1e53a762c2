"""The front server: one port for every tab, a token for other hosts, one tab process per page load.

``GET /`` (``?case=NAME`` optional) starts a tab process (:mod:`.tab`) and redirects the browser to
``/s/<id>/``, which is proxied (HTTP and websocket) to that process on 127.0.0.1. Each tab thus has its own
scene, session and state; its process ends when the tab's websocket closes (a reload starts a new tab on
the same case), or ``idle_exit_s`` after it started when no browser connects. When a token is set, every
request needs it, as ``?token=`` once (then a same-site cookie) or that cookie.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import secrets
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp
from aiohttp import web

COOKIE = "breastcmsl_token"
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length",
               "content-encoding"}


@dataclass
class Settings:
    """What ``breastcmsl-web`` was started with."""

    data: Path
    models: Path
    device: str = "auto"
    token: str | None = None
    max_tabs: int = 4
    idle_exit_s: int = 60
    start_timeout_s: float = 120.0


@dataclass
class Tab:
    """A running tab process and the port it serves on."""

    process: asyncio.subprocess.Process
    port: int
    drain: asyncio.Task | None = field(default=None, repr=False)


class Front:
    """The aiohttp application: token check, tab processes, proxy."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.tabs: dict[str, Tab] = {}
        self.client: aiohttp.ClientSession | None = None
        self.app = web.Application(middlewares=[self._auth])
        self.app.router.add_get("/", self.new_tab)
        self.app.router.add_route("*", "/s/{tab}/{tail:.*}", self.proxy)
        self.app.on_startup.append(self._startup)
        self.app.on_cleanup.append(self._cleanup)

    async def _startup(self, _app) -> None:
        self.client = aiohttp.ClientSession(auto_decompress=False)

    async def _cleanup(self, _app) -> None:
        for tab_id in list(self.tabs):
            self._stop(tab_id)
        await self.client.close()

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        token = self.settings.token
        if token is None:
            return await handler(request)
        given = request.query.get("token") or request.cookies.get(COOKIE) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return web.Response(status=403, text="breastcmsl-web: a valid ?token= is required\n")
        response = await handler(request)
        if request.query.get("token") and not response.prepared:
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return response

    async def new_tab(self, request: web.Request) -> web.StreamResponse:
        """Start a tab process for this page load and send the browser to it."""
        self._reap()
        if len(self.tabs) >= self.settings.max_tabs:
            return web.Response(status=503, text=f"breastcmsl-web: all {self.settings.max_tabs} tabs are in use; "
                                "close one and reload\n")
        tab_id, secret = secrets.token_hex(8), secrets.token_urlsafe(24)
        config = {"data": str(self.settings.data), "models": str(self.settings.models),
                  "device": self.settings.device, "secret": secret, "case": request.query.get("case", ""),
                  "idle_exit_s": self.settings.idle_exit_s}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "BreastCMSLWeb.tab", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, start_new_session=True, env={**os.environ, "WSLINK_READY_MSG": ""})
        process.stdin.write((json.dumps(config) + "\n").encode())
        await process.stdin.drain()
        process.stdin.close()
        try:
            port = await asyncio.wait_for(self._ready_port(process), self.settings.start_timeout_s)
        except (asyncio.TimeoutError, ValueError):
            _kill(process)
            return web.Response(status=500, text="breastcmsl-web: the tab process did not start (see the server log)\n")
        tab = Tab(process, port)
        tab.drain = asyncio.get_running_loop().create_task(process.stdout.read())
        self.tabs[tab_id] = tab
        case = f"&case={quote(config['case'])}" if config["case"] else ""
        return web.Response(status=302, headers={"Location": f"/s/{tab_id}/?secret={quote(secret)}{case}"})

    @staticmethod
    async def _ready_port(process: asyncio.subprocess.Process) -> int:
        while line := await process.stdout.readline():
            if line.startswith(b"READY "):
                return int(line.split()[1])
        raise ValueError("the tab process exited before it was ready")

    def _reap(self) -> None:
        for tab_id, tab in list(self.tabs.items()):
            if tab.process.returncode is not None:
                self._stop(tab_id)

    def _stop(self, tab_id: str) -> None:
        tab = self.tabs.pop(tab_id, None)
        if tab is None:
            return
        _kill(tab.process)
        if tab.drain is not None:
            tab.drain.cancel()

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        """Forward a request of tab ``/s/<id>/`` to its process (websocket or plain HTTP)."""
        tab = self.tabs.get(request.match_info["tab"])
        page = request.match_info["tail"] in ("", "index.html")
        if page and "secret" not in request.query:  # a reload (the client drops the secret): a new tab, same case
            if tab is not None:
                self._stop(request.match_info["tab"])
            case = request.query.get("case")
            return web.Response(status=302, headers={"Location": "/" + (f"?case={quote(case)}" if case else "")})
        if tab is None or tab.process.returncode is not None:
            return web.Response(status=404, text="breastcmsl-web: this tab has ended; open the start page again\n")
        url = f"http://127.0.0.1:{tab.port}/{request.match_info['tail']}"
        query = [(k, v) for k, v in request.query.items() if k != "token"]
        if request.headers.get("upgrade", "").lower() == "websocket":
            try:
                return await self._websocket(request, url, query)
            finally:  # the tab is closed (or reloaded, which starts a new one): its process ends now
                self._stop(request.match_info["tab"])
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS and k.lower() != "cookie"}
        async with self.client.request(request.method, url, params=query, headers=headers,
                                       data=await request.read(), allow_redirects=False) as upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS})
            if "content-encoding" in upstream.headers:
                response.headers["Content-Encoding"] = upstream.headers["content-encoding"]
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(1 << 16):
                await response.write(chunk)
            await response.write_eof()
            return response

    async def _websocket(self, request: web.Request, url: str, query: list) -> web.WebSocketResponse:
        browser = web.WebSocketResponse(max_msg_size=0)
        await browser.prepare(request)
        async with self.client.ws_connect(url.replace("http://", "ws://"), params=query, max_msg_size=0) as tab:

            async def pump(source, sink) -> None:
                """Forward messages until either side closes or goes away."""
                with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                    async for message in source:
                        if message.type == aiohttp.WSMsgType.TEXT:
                            await sink.send_str(message.data)
                        elif message.type == aiohttp.WSMsgType.BINARY:
                            await sink.send_bytes(message.data)
                        else:
                            break

            pumps = [asyncio.ensure_future(pump(browser, tab)), asyncio.ensure_future(pump(tab, browser))]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for task in pumps:
                task.cancel()
        await browser.close()
        return browser


def _kill(process: asyncio.subprocess.Process) -> None:
    """End a tab process and its children (the session's worker) by their process group."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the front server until interrupted; prints the address (with the token) once."""
    front = Front(settings)

    async def run() -> None:
        runner = web.AppRunner(front.app)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        suffix = f"?token={settings.token}" if settings.token else ""
        print(f"breastcmsl-web: serving http://{shown}:{bound}/{suffix}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(run())
