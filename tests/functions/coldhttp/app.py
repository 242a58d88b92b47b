"""Cold-start test app: ``init`` takes 1.5 s; requests before it would be a bug of the activator."""

from __future__ import annotations

import os
import time

from flask import Flask, jsonify

_loaded = {"model": False}


def init() -> None:
    time.sleep(1.5)
    _loaded["model"] = True


def create_app() -> Flask:
    app = Flask("coldhttp")

    @app.get("/hello")
    def hello():  # type: ignore[no-untyped-def]
        if not _loaded["model"]:
            return jsonify(error="model not ready"), 503
        return jsonify(pid=os.getpid(), model="loaded")

    return app
