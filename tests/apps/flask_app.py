"""A Flask app serving a file with ``send_file``, unchanged: the worker makes it zero-copy."""

from __future__ import annotations

import json
import os

from flask import Flask, request, send_file

import fastbody

app = Flask(__name__)


@app.get("/file")
def file():  # type: ignore[no-untyped-def]
    return send_file(request.args["path"], mimetype="application/octet-stream")


@app.get("/stats")
def stats():  # type: ignore[no-untyped-def]
    return json.dumps({"pid": os.getpid(), "stats": dict(fastbody.stats())})
