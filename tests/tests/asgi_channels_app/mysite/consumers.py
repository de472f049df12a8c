import os

from channels.generic.websocket import AsyncWebsocketConsumer

CLOSES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "closes.log")


class EchoConsumer(AsyncWebsocketConsumer):
    """Sends every message back as it came (text or binary); "close please" closes with 4002.
    The close code of each ended connection is appended to closes.log beside the site."""

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
        with open(CLOSES, "a") as f:
            f.write(f"{code}\n")


class ChatConsumer(AsyncWebsocketConsumer):
    """A chat room: each text message goes to every member of the room's group through the
    channel layer, tagged with the room."""

    async def connect(self):
        self.group = "chat_" + self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        await self.channel_layer.group_send(
            self.group, {"type": "chat.message", "text": text_data}
        )

    async def chat_message(self, event):
        await self.send(text_data=f"{self.group}: {event['text']}")

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.group, self.channel_name)
