"""Fixtures the unit tests share."""

from __future__ import annotations

from typing import Iterator

import pytest
from loop_thread import LoopThread


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    """An asyncio loop in a thread (`LoopThread`), closed after the test."""
    lp = LoopThread()
    yield lp
    lp.close()
