"""Swagger UI (`/docs`) and ReDoc (`/redoc`) served by the app itself: no CDN.

FastAPI's own pages load both from a CDN with a floating major version and no integrity check
(blank offline or under a strict CSP). The assets here come from the `fastapi-offline` wheel, pinned
with hashes in the lock files (Swagger UI 5.x, ReDoc 2.x); only its static files are used.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

# Under /docs, so the middleware's "cacheable docs" prefix covers the assets too.
ASSETS_URL = "/docs/assets"
DOCS_PATHS = ("/docs", "/redoc", "/openapi.json")


def install_docs(app: FastAPI) -> None:
    """Add /docs, /redoc and their assets (the app must be built with `docs_url=None, redoc_url=None`)."""
    app.mount(ASSETS_URL, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")

    def assets(request: Request) -> str:
        return f"{request.scope.get('root_path', '')}{ASSETS_URL}"

    def openapi_url(request: Request) -> str:
        return f"{request.scope.get('root_path', '')}{app.openapi_url}"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url(request),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets(request)}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets(request)}/swagger-ui.css",
            swagger_favicon_url=f"{assets(request)}/favicon.png",
            oauth2_redirect_url=None,  # bearer tokens only: no OAuth2 flow to come back from
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url(request),
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{assets(request)}/redoc.standalone.js",
            redoc_favicon_url=f"{assets(request)}/favicon.png",
            with_google_fonts=False,
        )
