"""A FastAPI app: its FileResponse goes out by sendfile under fastbody's uvicorn protocol.

pip install 'fastbody[uvicorn]' fastapi
uvicorn --app-dir examples fastapi_app:app --http fastbody.integrations.uvicorn:AutoProtocol
curl -o /dev/null http://127.0.0.1:8000/download      # FastAPI's FileResponse: sendfile
curl -r 0-99 -o /dev/null http://127.0.0.1:8000/video # ZeroCopyResponse: ranges by sendfile
curl http://127.0.0.1:8000/stats
"""

from __future__ import annotations

from big_file import BIG
from fastapi import FastAPI
from fastapi.responses import FileResponse

import fastbody
from fastbody.integrations.starlette import ZeroCopyResponse

app = FastAPI()


@app.get("/download")
async def download() -> FileResponse:
    return FileResponse(BIG, filename="python.bin")


@app.get("/video", response_class=ZeroCopyResponse)
async def video() -> ZeroCopyResponse:
    return ZeroCopyResponse(BIG, media_type="video/mp4")


@app.get("/stats")
async def stats() -> dict[str, int]:
    return fastbody.stats()
