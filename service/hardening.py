"""Wiring of the second hardening round into the app: the cheap auth path's state, the status
poll's fast path (service/poll_fast.py), the loader gate, security headers, and `/docs` without
a CDN.

- Every response gets `X-Content-Type-Options: nosniff` and, unless the route set its own (the
  browser UI and HTML reports do), `Content-Security-Policy: default-src 'none'; frame-ancestors
  'none'`: JSON answers never need to load anything.
- FastAPI's default `/docs` and `/redoc` pull Swagger UI / ReDoc scripts from a CDN: they are off
  unless `docs_assets_dir` holds `swagger-ui-bundle.js` and `swagger-ui.css`, which are then
  served from this process under `/docs-assets/` with a CSP allowing only this origin.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.datastructures import MutableHeaders
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from kdaudit.service.fast_auth import AddressGuard, AsyncBuckets, KeyCache, SingleFlight, make_address_limiter
from kdaudit.service.loader_gate import LoaderGate
from kdaudit.service.poll_fast import StatusPollFastPath

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
DOCS_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'")  # fmt: skip
DOCS_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css")


class SecurityHeaders:
    """Pure ASGI: add nosniff and a default CSP to every HTTP response that has none."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = API_CSP
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(app: FastAPI, settings) -> None:
    """State for service/auth.py and the upload route, the headers middleware, and /docs."""
    s = settings
    app.state.key_cache = KeyCache(s.auth_cache_seconds)
    app.state.key_buckets = AsyncBuckets(app.state.rate_limiter)
    app.state.address_guard = AddressGuard(AsyncBuckets(make_address_limiter(s, app.state.rate_limiter)))
    app.state.key_flights = SingleFlight()
    app.state.loader_gate = LoaderGate(s.max_concurrent_loaders, s.max_concurrent_loaders_per_tenant)
    app.add_middleware(StatusPollFastPath, state=app.state)  # innermost: the other middlewares wrap it
    app.add_middleware(SecurityHeaders)
    folder = s.docs_assets_dir
    if folder is None or not all((folder / name).is_file() for name in DOCS_ASSETS):
        return
    app.mount("/docs-assets", StaticFiles(directory=str(folder)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js", swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )  # fmt: skip
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page
