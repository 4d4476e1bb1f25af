"""servestatic's ASGI app over the directory named by ``FASTBODY_TEST_STATIC``, mounted at
``/static/`` with ``max_age=60``, for ``test_servestatic.py``; what is not a static file goes to
the handoff test app, whose ``/stats`` answers with the pid, the fd count and ``fastbody.stats()``."""

from __future__ import annotations

import os

from handoff_asgi_app import app as fallback
from servestatic import ServeStaticASGI

app = ServeStaticASGI(fallback, root=os.environ["FASTBODY_TEST_STATIC"], prefix="/static/", max_age=60)
