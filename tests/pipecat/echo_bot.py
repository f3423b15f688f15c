"""A Pipecat bot, written exactly as one written for Twilio Media Streams, that echoes the
caller's audio back: tests/call_pipecat.rs points a dialtone agent at it.

    python3 tests/pipecat/echo_bot.py PORT [goodbye]

With `goodbye`, the bot also says goodbye as soon as the call starts (one second of a
1 kHz tone) and then ends its pipeline with an EndFrame, the way a Pipecat bot ends a call.

Serves ws://127.0.0.1:PORT/ws with FastAPI/uvicorn and prints "echo_bot ready on PORT"
once it listens. Everything that touches the wire is Pipecat's own, unchanged:
parse_telephony_websocket reads the `connected`/`start` messages, TwilioFrameSerializer
and FastAPIWebsocketTransport carry the audio. Only the processor in the middle is ours.
"""

import asyncio
import math
import socket
import struct
import sys

import uvicorn
from fastapi import FastAPI, WebSocket
from loguru import logger

from pipecat.frames.frames import EndFrame, Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.workers.runner import WorkerRunner

logger.remove()
logger.add(sys.stderr, level="INFO")

app = FastAPI()
GOODBYE = False
RATE = 8000


def goodbye_tone() -> OutputAudioRawFrame:
    """One second of a 1 kHz tone, 16-bit PCM at the pipeline's 8 kHz."""
    samples = (int(8000 * math.sin(2 * math.pi * 1000 * i / RATE)) for i in range(RATE))
    audio = b"".join(struct.pack("<h", v) for v in samples)
    return OutputAudioRawFrame(audio=audio, sample_rate=RATE, num_channels=1)


class Echo(FrameProcessor):
    """Turns every frame of caller audio into bot audio."""

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self.push_frame(
                OutputAudioRawFrame(
                    audio=frame.audio,
                    sample_rate=frame.sample_rate,
                    num_channels=frame.num_channels,
                )
            )
        else:
            await self.push_frame(frame, direction)


@app.websocket("/ws")
async def media_stream(websocket: WebSocket):
    await websocket.accept()
    transport_type, call_data = await parse_telephony_websocket(websocket)
    logger.info(f"transport={transport_type} call_data={call_data}")
    if transport_type != "twilio":
        raise RuntimeError(f"not recognised as Twilio Media Streams: {transport_type}")

    serializer = TwilioFrameSerializer(
        stream_sid=call_data["stream_id"],
        call_sid=call_data["call_id"],
        # No Twilio account: nothing to hang up through Twilio's REST API.
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
    )
    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            serializer=serializer,
        ),
    )
    worker = PipelineWorker(
        Pipeline([transport.input(), Echo(), transport.output()]),
        # Telephone audio, as in Pipecat's Twilio examples.
        params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(transport, websocket):
        if GOODBYE:
            logger.info("saying goodbye, then ending the pipeline")
            await worker.queue_frames([goodbye_tone(), EndFrame()])

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, websocket):
        logger.info("caller gone; ending the pipeline")
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()
    logger.info("pipeline finished")


def main():
    global GOODBYE
    port = int(sys.argv[1])
    GOODBYE = sys.argv[2:] == ["goodbye"]
    # Bind before announcing, so the test can connect as soon as it reads the ready line.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    print(f"echo_bot ready on {port}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    asyncio.run(server.serve(sockets=[sock]))


if __name__ == "__main__":
    main()
