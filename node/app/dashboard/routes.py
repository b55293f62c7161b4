"""Dashboard HTTP routes (aiohttp): sessions from the admin credential, JSON for the page."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from importlib import resources

from aiohttp import web

from node.app.dashboard.data import DashboardData
from node.clock import SYSTEM_CLOCK, Clock
from node.hubdir import token_matches

SESSION_COOKIE = "sr_session"
SESSION_SECONDS = 12 * 3600
STATIC = resources.files("node.app.dashboard").joinpath("static")
CONTENT_TYPES = {".html": "text/html", ".js": "application/javascript", ".css": "text/css"}


class Dashboard:
    def __init__(self, data: DashboardData, admin_token_sha256: Callable[[], str], read_only: bool, clock: Clock = SYSTEM_CLOCK) -> None:
        self.data = data
        self._expected = admin_token_sha256  # read at every login: a rotated token takes effect at once
        self.read_only = read_only
        self._clock = clock
        # SHA-256 of session id -> (expiry in monotonic seconds, hash of the token it was opened
        # with): rotating the token ends the sessions opened with the old one.
        self._sessions: dict[str, tuple[float, str]] = {}

    def _session_ok(self, request: web.Request) -> bool:
        return self.read_only or self._logged_in(request)

    def _logged_in(self, request: web.Request) -> bool:
        session = request.cookies.get(SESSION_COOKIE, "")
        found = self._sessions.get(hashlib.sha256(session.encode()).hexdigest()) if session else None
        return found is not None and found[0] > self._clock.monotonic() and secrets.compare_digest(found[1], self._expected())

    async def login(self, request: web.Request) -> web.Response:
        try:
            token = str((await request.json()).get("token", "")).strip()
        except ValueError:
            token = ""
        if not token or not token_matches(token, self._expected()):
            return web.json_response({"error": "unauthenticated", "message": "that is not this hub's admin credential"}, status=401)
        session = secrets.token_urlsafe(32)
        now = self._clock.monotonic()
        self._sessions = {k: v for k, v in self._sessions.items() if v[0] > now}  # forget expired ones
        self._sessions[hashlib.sha256(session.encode()).hexdigest()] = (now + SESSION_SECONDS, self._expected())
        response = web.json_response({"ok": True})
        response.set_cookie(SESSION_COOKIE, session, max_age=SESSION_SECONDS, httponly=True, samesite="Strict",
                            secure=request.secure, path="/")
        return response

    async def logout(self, request: web.Request) -> web.Response:
        session = request.cookies.get(SESSION_COOKIE, "")
        self._sessions.pop(hashlib.sha256(session.encode()).hexdigest(), None)
        response = web.json_response({"ok": True})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    def api(self, gather, public_view=None):
        """`public_view`, if given, is what an anonymous visitor of a read-only dashboard gets."""
        async def handler(request: web.Request) -> web.Response:
            if not self._session_ok(request):
                return web.json_response({"error": "unauthenticated", "message": "log in with the admin credential"}, status=401)
            if public_view is not None and not self._logged_in(request):
                return web.json_response(await public_view())
            return web.json_response(await gather())
        return handler

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info.get("name") or "index.html"
        path = STATIC.joinpath(name)
        if "/" in name or not path.is_file():
            raise web.HTTPNotFound()
        suffix = name[name.rfind("."):]
        return web.Response(body=path.read_bytes(), content_type=CONTENT_TYPES.get(suffix, "application/octet-stream"),
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                                     "Content-Security-Policy": "default-src 'self'; style-src 'self'; img-src 'self' data:"})

    async def session(self, request: web.Request) -> web.Response:
        return web.json_response({"authenticated": self._session_ok(request), "read_only": self.read_only})

    def add_routes(self, app: web.Application) -> None:
        d = self.data
        app.router.add_get("/", self.static)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/api/session", self.session)
        app.router.add_post("/api/login", self.login)
        app.router.add_post("/api/logout", self.logout)
        for path, gather in (("overview", d.overview), ("peers", d.peers), ("agreements", d.agreements),
                             ("audit", d.audit), ("chart", d.regional_chart), ("map", d.map)):
            app.router.add_get(f"/api/{path}", self.api(gather))
        app.router.add_get("/api/sensors", self.api(d.sensors, public_view=lambda: d.sensors(public=True)))
