"""Swagger UI and ReDoc served by the app itself (app/docs.py), or not at all with DOCS_ENABLED=false."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest

from app.config import Settings
from tests.support.apps import http_client, running_app

ASSET_REFERENCE = re.compile(rb"""(?:src|href)\s*=\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_reference_only_local_assets(client: httpx.AsyncClient, page: str) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert (
        b"http://" not in response.content and b"https://" not in response.content and b"//cdn" not in response.content
    )
    references = ASSET_REFERENCE.findall(response.content)
    assert references
    for reference in references:
        assert reference.startswith(b"/docs/assets/"), reference
        asset = await client.get(reference.decode())
        assert asset.status_code == 200, reference
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert "no-store" not in asset.headers.get("cache-control", "")  # public, cacheable
    assert b"/openapi.json" in response.content


async def test_docs_script_is_served_as_javascript(client: httpx.AsyncClient) -> None:
    for name in ("swagger-ui-bundle.js", "redoc.standalone.js"):
        response = await client.get(f"/docs/assets/{name}")
        assert response.status_code == 200
        assert "javascript" in response.headers["content-type"]
        assert len(response.content) > 100_000


async def test_docs_disabled_are_404_but_openapi_stays(settings_factory: Callable[..., Settings]) -> None:
    async with running_app(settings_factory(DOCS_ENABLED="false")) as app, http_client(app) as client:
        for path in ("/docs", "/redoc", "/docs/assets/swagger-ui-bundle.js", "/docs/oauth2-redirect"):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert response.headers["content-type"] == "application/problem+json"
        assert (await client.get("/openapi.json")).status_code == 200
