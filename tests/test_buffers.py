"""The copy path's buffers (``fastbody.buffers``): sized views, a bounded idle set, private to
the process that maps them."""

from __future__ import annotations

import os
from contextlib import ExitStack

from fastbody import buffers


def test_a_view_is_the_size_asked_within_bounds() -> None:
    for asked, size in [
        (0, 1),
        (1, 1),
        (4096, 4096),
        (buffers.SIZE, buffers.SIZE),
        (buffers.SIZE * 2, buffers.SIZE),
    ]:
        with buffers.lent(asked) as view:
            assert len(view) == size and not view.readonly


def test_views_are_released_and_buffers_kept_up_to_max_idle() -> None:
    with ExitStack() as stack:
        views = [stack.enter_context(buffers.lent()) for _ in range(buffers.MAX_IDLE + 3)]
        for number, view in enumerate(views):
            view[0] = number
        assert len({view.obj for view in views}) == len(views)  # one buffer each while lent
    assert len(buffers._idle) == buffers.MAX_IDLE
    assert all(not buffer.closed for buffer in buffers._idle)
    for view in views:
        try:
            view[0]
        except ValueError:
            continue  # released
        raise AssertionError("a view outlived its with block")


def test_a_buffer_written_in_a_forked_child_is_unchanged_in_the_parent() -> None:
    with buffers.lent(16) as view:
        view[:] = b"p" * 16
        child = os.fork()
        if child == 0:  # the child writes the same buffer and exits at once
            view[:] = b"c" * 16
            os._exit(0)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert bytes(view) == b"p" * 16
