import os

from channels.generic.websocket import AsyncWebsocketConsumer


class Echo(AsyncWebsocketConsumer):
    """Sends every message back as it came (text or binary); "close please" closes with 4002.
    The close code of each ended connection is appended to $CHAT_CLOSES."""

    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        if text_data == "close please":
            await self.close(code=4002)
        elif text_data is not None:
            await self.send(text_data=text_data)
        else:
            await self.send(bytes_data=bytes_data)

    async def disconnect(self, code):
        with open(os.environ["CHAT_CLOSES"], "a") as f:
            f.write(f"{code}\n")
