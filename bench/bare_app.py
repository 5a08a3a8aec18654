"""The baseline for B1: a bare FastAPI JSON endpoint, served by uvicorn the way `kiota api` is served.

`python -m bench.bare_app` serves on 127.0.0.1:$PORT. It parses the JSON body and answers
{"ok": true}: what FastAPI, uvicorn and the loopback cost, with no database and no queue.
"""

from __future__ import annotations

import os

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from kiota.process import freeze_what_lives_forever

app = FastAPI(title="bare")


@app.post("/echo")
async def echo(request: Request) -> JSONResponse:
    await request.json()
    return JSONResponse({"ok": True})


@app.get("/ready")
async def ready() -> JSONResponse:
    return JSONResponse({"ok": True})


def main() -> None:
    # The same server options as `kiota api` (kiota/cli.py): uvloop and httptools when installed.
    freeze_what_lives_forever()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ["PORT"]),
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main()
