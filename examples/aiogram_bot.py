"""An aiogram 3 Telegram bot: each chat is one ``previous_response_id`` chain, one turn at a time.

    python examples/aiogram_bot.py      # offline: a burst of fake updates, FakeOpenAI, no network
    TELEGRAM_BOT_TOKEN=... OPENAI_API_KEY=sk-... python examples/aiogram_bot.py   # real polling

aiogram runs every update in its own task, so a user who sends three messages in a row gets
three handlers running at once on the same chat. With ``previous_response_id`` chains OpenAI
raises no error then: the three turns all continue from the same response, and two of them are
silently lost from the chat's history. Here each handler wraps its turn in
``guard_conversation(..., chain=...)``: the lease key is the chat, taken as the handler starts;
turns of one chat run one at a time, in arrival order; the guard supplies
``previous_response_id`` from the chain's head and moves the head under the lease; and the
reply is sent inside the turn, so replies go out in order too. Different chats run in parallel.

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
from threadlock import ThreadBusy
from threadlock.openai import guard_conversation
from threadlock.testing import FakeOpenAI

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
BUSY_TEXT = "Still answering your earlier messages; please send this one again in a minute."


def chain_key(chat_id: int) -> str:
    """The lease key of a chat, also the key under which its last response id is kept."""
    return f"telegram:{chat_id}"


async def on_text(
    message: Message, lock: threadlock.ThreadLock, openai_client: openai.AsyncOpenAI
) -> None:
    """One turn per message; ``lock`` and ``openai_client`` come from the dispatcher's
    workflow data."""
    try:
        async with guard_conversation(
            openai_client, None, lock=lock, chain=chain_key(message.chat.id), ttl=30, timeout=120
        ) as turn:
            response = await turn.create(model=MODEL, input=message.text or "")
            await message.answer(response.output_text)  # inside the turn: replies stay in order
    except ThreadBusy:
        # Waited two minutes behind earlier turns of this chat: tell the user instead of
        # keeping the update's task alive forever.
        await message.answer(BUSY_TEXT)


def build_dispatcher(lock: threadlock.ThreadLock, client: openai.AsyncOpenAI) -> Dispatcher:
    """The dispatcher, with the lock and the OpenAI client injected into every handler."""
    router = Router(name="chat")
    router.message.register(on_text, F.text)
    dp = Dispatcher(lock=lock, openai_client=client)
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
    for chat_id, text in asyncio.run(offline_demo()):
        print(f"bot -> chat {chat_id}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
