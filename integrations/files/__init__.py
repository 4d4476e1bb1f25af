"""Serving a file over HTTP: what to answer, decided without I/O.

- ``ranges``: a ``Range`` header → the byte ranges to send, "ignore it" or "unsatisfiable";
- ``conditions``: ``If-Match`` / ``If-Unmodified-Since`` / ``If-None-Match`` /
  ``If-Modified-Since`` → 412 or 304 (RFC 9110 13.2.2's order), and ``If-Range``;
- ``representation``: media types, the precompressed sibling ``Accept-Encoding`` allows,
  ``Cache-Control`` (``immutable`` for names carrying a content hash), ETag and Last-Modified;
- ``answer``: all of that for one request → a ``FileAnswer`` (status, headers, body parts);
- ``handoff``: ``X-Sendfile`` / ``X-Accel-Redirect`` settings and the file a header names;
- ``wsgi``: the handoff and werkzeug's ranges for WSGI servers (fastbody's gunicorn workers).

Starlette's ``StaticFiles`` and ``ZeroCopyResponse``, the gunicorn workers and the uvicorn
protocols all answer from ``answer``: one set of rules for every server.
"""

from .answer import FileAnswer, FileRange, Part, answer
from .handoff import Handoff

__all__ = ["FileAnswer", "FileRange", "Handoff", "Part", "answer"]
