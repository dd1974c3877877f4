"""run_in_background: the calling thread (and what it starts) yields the cores to the model's thread."""

from __future__ import annotations

import os
import threading

from imaging.cpus import BACKGROUND_NICENESS, run_in_background


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_only_the_calling_thread_is_lowered() -> None:
    main_before = _nice()
    seen: dict[str, int] = {}

    def background() -> None:
        before = _nice()
        run_in_background()
        seen["lowered"] = _nice() - before

        def child() -> None:  # started by a lowered thread: inherits its priority
            seen["child"] = _nice() - before

        t = threading.Thread(target=child)
        t.start()
        t.join()

    t = threading.Thread(target=background)
    t.start()
    t.join()
    expected = min(19, main_before + BACKGROUND_NICENESS) - main_before
    assert seen == {"lowered": expected, "child": expected}
    assert _nice() == main_before  # the model's thread keeps its priority
