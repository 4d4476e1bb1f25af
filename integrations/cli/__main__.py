"""``python -m fastbody.integrations.cli`` (and ``python -m fastbody``, which hands over here)."""

from . import main

main()
