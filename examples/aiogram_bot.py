"""An aiogram 3 Telegram bot: each chat is one ``previous_response_id`` chain, and a burst of
messages is answered by one reply.

    python examples/aiogram_bot.py      # offline: a burst of fake updates, FakeOpenAI, no network
    TELEGRAM_BOT_TOKEN=... OPENAI_API_KEY=sk-... python examples/aiogram_bot.py   # real polling

aiogram runs every update in its own task, so a user who sends three messages in a row gets
three handlers running at once on the same chat. With ``previous_response_id`` chains OpenAI
raises no error then: the three turns all continue from the same response, and two of them are
silently lost from the chat's history. Here each handler posts its message to the chat's
:class:`threadlock.Inbox` (``coalesce``, the update id as the message id, so a redelivered
update is a no-op). The first handler owns the chat; the others return at once, their
messages pending for the owner, which answers everything pending in one turn under the
batch's lease: ``guard_conversation(..., chain=..., lease=batch.lease)`` supplies
``previous_response_id`` from the chain's head and moves the head under that lease. A turn
that newer messages superseded sends nothing (its answer stays in the chain); the next
turn answers them too, so a burst gets one reply. Different chats run in parallel.

(With the Conversations API instead, key the lease on the conversation id:
``guard_conversation(client, conversation_id, lock=lock)``; see ``asyncio_bot.py``.)

Set ``THREADLOCK_URL`` (e.g. ``redis://...``) to share the locks between several bot
processes; the default memory backend protects one process.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any

import openai
from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.session.base import BaseSession
from aiogram.methods import SendMessage, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import Chat, Message, Update, User

import threadlock
from threadlock import Inbox, InboxFull
from threadlock.openai import guard_conversation
from threadlock.testing import FakeOpenAI

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
FULL_TEXT = "That is a lot of messages at once; please wait for my answer."


def chain_key(chat_id: int) -> str:
    """The lease key of a chat, also the key under which its last response id is kept."""
    return f"telegram:{chat_id}"


async def on_text(
    message: Message, inbox: Inbox, lock: threadlock.ThreadLock, openai_client: openai.AsyncOpenAI
) -> None:
    """Post the message; if this handler owns the chat, answer every batch. ``inbox``,
    ``lock`` and ``openai_client`` come from the dispatcher's workflow data."""
    key = chain_key(message.chat.id)
    try:
        turns = inbox.turns(key, message.text or "", id=f"{key}:{message.message_id}", ttl=30)
        async with turns:
            async for batch in turns:
                text = "\n".join(str(m.payload) for m in batch.messages)
                async with guard_conversation(
                    openai_client, None, lock=lock, chain=key, lease=batch.lease
                ) as turn:
                    response = await turn.create(model=MODEL, input=text)
                if await batch.superseded():
                    continue  # newer messages arrived: the next turn answers them too
                await message.answer(response.output_text)  # under the lease: in order
    except InboxFull:
        await message.answer(FULL_TEXT)  # nothing already pending was dropped


def build_dispatcher(lock: threadlock.ThreadLock, client: openai.AsyncOpenAI) -> Dispatcher:
    """The dispatcher, with the inbox, the lock and the OpenAI client injected into every
    handler."""
    router = Router(name="chat")
    router.message.register(on_text, F.text)
    dp = Dispatcher(inbox=Inbox(lock), lock=lock, openai_client=client)
    dp.include_router(router)
    return dp


# -- offline mode: no Telegram, no OpenAI --------------------------------------------------------


class OfflineSession(BaseSession):
    """An aiogram session that answers Bot API calls locally and records every message sent.

    aiogram's own extension point (``Bot(session=...)``): nothing leaves the process.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[int, str]] = []
        self._ids = itertools.count(1000)

    async def make_request(
        self, bot: Bot, method: TelegramMethod[TelegramType], timeout: int | None = None
    ) -> TelegramType:
        if isinstance(method, SendMessage):
            chat_id = int(method.chat_id)
            self.sent.append((chat_id, method.text))
            return Message(  # type: ignore[return-value]
                message_id=next(self._ids),
                date=datetime.now(UTC),
                chat=Chat(id=chat_id, type="private"),
                text=method.text,
            )
        raise NotImplementedError(f"OfflineSession does not serve {type(method).__name__}")

    async def stream_content(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        timeout: int = 30,
        chunk_size: int = 65536,
        raise_for_status: bool = True,
    ) -> AsyncGenerator[bytes, None]:
        raise NotImplementedError
        yield b""  # pragma: no cover

    async def close(self) -> None:
        pass


_update_ids = itertools.count(1)


def text_update(chat_id: int, text: str) -> Update:
    """A Telegram update carrying a private text message, as the Bot API would deliver it."""
    update_id = next(_update_ids)
    return Update(
        update_id=update_id,
        message=Message(
            message_id=update_id,
            date=datetime.now(UTC),
            chat=Chat(id=chat_id, type="private"),
            from_user=User(id=chat_id, is_bot=False, first_name=f"user{chat_id}"),
            text=text,
        ),
    )


async def offline_demo(chats: int = 2, messages: int = 3) -> list[tuple[int, str]]:
    """Feed a burst of updates to the dispatcher, as polling would; returns what was sent."""
    fake = FakeOpenAI(response_duration=0.05)
    session = OfflineSession()
    bot = Bot("123456:offline-demo", session=session)
    async with threadlock.MemoryThreadLock() as lock:
        dp = build_dispatcher(lock, fake.client())
        tasks = []
        for i in range(messages):
            for chat_id in range(1, chats + 1):
                update = text_update(chat_id, f"message {i} from chat {chat_id}")
                tasks.append(asyncio.create_task(dp.feed_update(bot, update)))
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
    print(f"FakeOpenAI refused {fake.concurrency_errors} request(s) for concurrent use")
    print(f"model calls: {fake.calls['POST /responses']} for {chats * messages} messages")
    return session.sent


async def polling() -> None:
    bot = Bot(os.environ["TELEGRAM_BOT_TOKEN"])
    async with threadlock.from_env() as lock:
        dp = build_dispatcher(lock, openai.AsyncOpenAI())
        await dp.start_polling(bot)


def main() -> int:
    if os.environ.get("TELEGRAM_BOT_TOKEN") and os.environ.get("OPENAI_API_KEY"):
        asyncio.run(polling())
        return 0
    sent = asyncio.run(offline_demo())
    for chat_id, text in sent:
        print(f"bot -> chat {chat_id}: {text!r}")
    for chat_id in sorted({c for c, _ in sent}):
        print(f"chat {chat_id}: {sum(c == chat_id for c, _ in sent)} reply for its burst")
    return 0


if __name__ == "__main__":
    sys.exit(main())
