"""``python -m fastbody``: the ``fastbody`` command, which lives with the integrations (the engine
itself imports none of them; this entry point only hands over to it)."""

import runpy

runpy.run_module("fastbody.integrations.cli", run_name="__main__", alter_sys=True)
