"""GET /: the playground page (service/static/index.html), or a stub while it is missing."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import FileResponse, HTMLResponse, Response

router = APIRouter()

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>onestep</title></head>
<body><h1>onestep</h1><p>The playground page is not installed.
See <a href="/docs">/docs</a> for the API and <a href="/v1/models">/v1/models</a> for the models.</p></body></html>
"""


@router.get("/", include_in_schema=False)
async def playground() -> Response:
    index = STATIC_DIR / "index.html"
    if index.is_file():
        return FileResponse(index, media_type="text/html")
    return HTMLResponse(_PLACEHOLDER)
