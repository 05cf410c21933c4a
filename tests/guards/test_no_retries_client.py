"""The guards' create calls go through a no-retries copy of the client, built once per client.

Memory backend only: what is tested is the client the guard derives, not the lock.
"""

from __future__ import annotations

import gc
import weakref

import pytest

from threadlock import MemoryThreadLock
from threadlock.openai import guard_conversation
from threadlock.openai._clients import no_retries
from threadlock.testing import FakeOpenAI

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_create_is_sent_once_even_when_the_client_retries() -> None:
    fake = FakeOpenAI(response_duration=0)
    client = fake.client(max_retries=2)  # the SDK would retry a 500 twice
    conversation = fake.add_conversation()
    lock = MemoryThreadLock()
    for turn_index in range(2):  # the first turn builds the copy, the second reuses it
        fake.inject("POST", "/responses", status=500)
        fake.reset_counters()
        with pytest.raises(Exception, match="500"):
            async with guard_conversation(client, conversation, lock=lock) as turn:
                await turn.create(model="m", input=f"t{turn_index}")
        assert fake.requests == 1
    async with guard_conversation(client, conversation, lock=lock) as turn:
        await turn.create(model="m", input="ok")
    assert fake.conversation_inputs(conversation) == ["ok"]
    assert await lock.inspect(conversation) is None


def test_the_copy_is_built_once_per_client() -> None:
    fake = FakeOpenAI()
    client = fake.client(max_retries=2)
    first = no_retries(client)
    assert first.max_retries == 0
    assert client.max_retries == 2
    assert no_retries(client) is first
    other = fake.client(max_retries=2)
    assert no_retries(other) is not first


def test_a_changed_setting_rebuilds_the_copy() -> None:
    fake = FakeOpenAI()
    client = fake.client(api_key="sk-old")
    first = no_retries(client)
    client.api_key = "sk-rotated"
    second = no_retries(client)
    assert second is not first
    assert second.api_key == "sk-rotated"
    assert second.max_retries == 0


def test_the_copy_does_not_keep_its_client_alive() -> None:
    fake = FakeOpenAI()
    client = fake.client()
    copy = no_retries(client)
    ref = weakref.ref(client)
    del client
    gc.collect()
    assert ref() is None
    assert copy.max_retries == 0
