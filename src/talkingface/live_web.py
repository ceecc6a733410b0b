"""The web UI's live mode: ``/live`` on the ``talkingface serve`` server. Pick a photo, speak into
the microphone, and the face talks in the page as you speak (``api.LiveSession`` per connection).

Why a WebSocket and not Gradio's streaming components: Gradio streams microphone audio in pieces
of about half a second (``stream_every``) and sends images back through its queue, which adds its
own turn-taking; a live session needs 40 ms pieces in and each frame out as soon as it is made
(``benchmarks/live_latency.py``: p95 ~230 ms push-to-frame, 186 ms of it the model's look-ahead).
One WebSocket carries both, on the server Gradio already runs.

Protocol (``/live/ws``): the page sends a JSON text ``{"sample_rate", "articulation",
"keep_expression", "still", "checkpoint"}``, then the photo's bytes, then float32 little-endian mono samples
as binary messages of any length, and ``{"end": true}`` when the speaker stops. The server answers
``{"ready": true, "width", "height", "box", "lookahead_ms"}`` and the photo as it animates it (one
binary message: an 8-byte header ``<iHH`` of frame index -1 and x, y = 0, then a JPEG), then
every frame as the part that changes (header: frame index, x, y of the box; a JPEG of the box), and
``{"done": true, "frames": N}`` after the end, or ``{"error": "one line"}``. One live session at
a time per server (it takes about half of two cores); a second page is told so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import struct
import tempfile
import threading
from pathlib import Path

import numpy as np

from .errors import TalkingFaceError

log = logging.getLogger(__name__)

MAX_LIVE_SECONDS = 600.0  # one session's speech; then the page starts a new one
JPEG_QUALITY = 90


def _jpeg(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return buf.tobytes()


def _message(index: int, x: int, y: int, rgb: np.ndarray) -> bytes:
    return struct.pack("<iHH", index, x, y) + _jpeg(rgb)


class LiveEndpoint:
    """The WebSocket handler and the page, for one server: ``service`` (serve.Service) gives the
    models and the limits; one session runs at a time."""

    def __init__(self, service):
        self.service = service
        self._busy = threading.Lock()
        self.sessions = 0  # started, for the log and the tests

    def add_to(self, app) -> None:
        """Put ``/live`` and ``/live/ws`` first among ``app``'s routes (a launched Gradio app)."""
        from starlette.responses import HTMLResponse
        from starlette.routing import Route, WebSocketRoute

        async def page(request):
            return HTMLResponse(PAGE)

        app.router.routes[:0] = [Route("/live", page), WebSocketRoute("/live/ws", self.socket)]

    async def socket(self, ws) -> None:
        from starlette.websockets import WebSocketDisconnect

        await ws.accept()
        if not self._busy.acquire(blocking=False):
            await ws.send_text(json.dumps({"error": "a live session is already running on this server; try again when it ends"}))
            await ws.close()
            return
        loop = asyncio.get_running_loop()
        work = Path(tempfile.mkdtemp(prefix="live-", dir=self.service.tmp))
        try:
            await self._run(ws, loop, work)
        except WebSocketDisconnect:
            log.info("live session: the page went away")
        except (TalkingFaceError, ValueError) as e:
            from .serve import readable

            await self._send_error(ws, readable(str(e), {str(work / "upload"): "the photo", str(work / "face.png"): "the photo"}, work))
        except Exception as e:  # one line to the page, the details in the server log
            log.exception("live session failed")
            await self._send_error(ws, f"the live session failed ({type(e).__name__})")
        finally:
            self._busy.release()
            shutil.rmtree(work, ignore_errors=True)

    @staticmethod
    async def _send_error(ws, message: str) -> None:
        with contextlib.suppress(Exception):
            await ws.send_text(json.dumps({"error": message}))
            await ws.close()

    async def _run(self, ws, loop, work: Path) -> None:
        from . import api
        from .serve import check_size, face_input, face_kind

        limits = self.service.limits
        try:
            hello = json.loads(await ws.receive_text())
            sample_rate = int(hello.get("sample_rate", 0))
        except (ValueError, TypeError, AttributeError):
            raise TalkingFaceError("the page's first message must be JSON with its sample_rate") from None
        name, articulation, keep, still = self.service.options(hello.get("checkpoint"), hello.get("articulation", 1.0),
                                                              hello.get("keep_expression", True), hello.get("still", False))
        photo = await ws.receive_bytes()
        path = work / "upload"
        path.write_bytes(photo)
        check_size(path, limits.max_upload_mb, "the photo")
        if face_kind(path, "the photo") != "image":
            raise TalkingFaceError("the photo: live sessions animate a photo (png, jpg, webp ...), not a video")
        path = face_input(path, "image", work)  # named as a photo: api tells photos by their names
        model = self.service.model(name)
        live = await loop.run_in_executor(None, lambda: api.LiveSession(path, model=model, sample_rate=sample_rate,
                                                                         articulation=articulation, keep_expression=keep,
                                                                         still=still))
        self.sessions += 1
        x0, y0, x1, y1 = live.box
        box = [x0, y0, x1, y1] if x1 > x0 else [0, 0, *live.size]
        log.info("live session %d: %dx%d photo, %d Hz", self.sessions, *live.size, sample_rate)
        await ws.send_text(json.dumps({"ready": True, "width": live.size[0], "height": live.size[1], "box": box,
                                       "lookahead_ms": round(live.lookahead_s * 1000)}))
        await ws.send_bytes(_message(-1, 0, 0, live.image))
        x0, y0, x1, y1 = box

        def push(samples):
            frames = live.push(samples) if samples is not None else live.flush()
            first = live.frames - len(frames)
            return [_message(first + i, x0, y0, f[y0:y1, x0:x1]) for i, f in enumerate(frames)]

        max_samples = MAX_LIVE_SECONDS * sample_rate
        # The socket is read by its own task: when making frames falls behind (a busy CPU), every
        # piece that arrived meanwhile goes into one push, whose frames are made in one batch
        # (~6 ms a frame instead of ~16 alone), so the session catches up instead of lagging more.
        inbox: asyncio.Queue = asyncio.Queue()

        async def read():
            while True:
                msg = await ws.receive()
                await inbox.put(msg)
                if msg["type"] == "websocket.disconnect":
                    return

        reader = asyncio.create_task(read())
        try:
            while True:
                msgs = [await inbox.get()]
                while not inbox.empty():
                    msgs.append(inbox.get_nowait())
                pieces, end = [], False
                for msg in msgs:
                    if msg["type"] == "websocket.disconnect":
                        log.info("live session %d: the page went away after %d frames", self.sessions, live.frames)
                        return
                    if msg.get("bytes") is not None:
                        if len(msg["bytes"]) % 4:
                            raise TalkingFaceError("audio messages must be float32 samples (a multiple of 4 bytes)")
                        pieces.append(np.frombuffer(msg["bytes"], "<f4"))
                    else:
                        end = end or bool(json.loads(msg.get("text") or "{}").get("end"))
                out = await loop.run_in_executor(None, push, np.concatenate(pieces)) if pieces else []
                end = end or live.samples >= max_samples
                if end:
                    out += await loop.run_in_executor(None, push, None)
                for m in out:
                    await ws.send_bytes(m)
                if end:
                    await ws.send_text(json.dumps({"done": True, "frames": live.frames,
                                                   "limit": live.samples >= max_samples}))
                    log.info("live session %d: %d frames", self.sessions, live.frames)
                    await ws.close()
                    return
        finally:
            reader.cancel()


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>talkingface live</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5em; max-width: 60em; }
 canvas { max-width: 100%; max-height: 75vh; background: #eee; display: block; margin-top: 1em; }
 #status { margin-top: .6em; min-height: 1.3em; } #stats { color: #555; font-size: .9em; }
 button { font-size: 1em; padding: .3em 1em; margin-right: .5em; }
</style></head><body>
<h2>talkingface live</h2>
<p>Pick a photo of a face, press Start and speak: the face talks as you speak. <a href="/">Back to the video page</a></p>
<input type="file" id="photo" accept="image/*">
<label>Articulation <input type="number" id="articulation" value="1" min="0" max="3" step="0.1" style="width:4em"></label>
<label><input type="checkbox" id="keep" checked> Keep the photo's expression</label>
<label><input type="checkbox" id="still"> Still (only the mouth moves)</label><br><br>
<button id="start">Start</button><button id="stop" disabled>Stop</button>
<div id="status"></div><div id="stats"></div>
<canvas id="face" width="16" height="16"></canvas>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const stats = window.liveStats = {frames: 0, latencies: [], motion: 0, done: false, error: "", ready: false,
                                  total: 0, samples: 0, rate: 0};
let ws = null, audio = null, mic = null, proc = null, sent = [], samples = 0, rate = 48000;
let base = null, chain = Promise.resolve(), firstBox = null;
const ctx = $("face").getContext("2d", {willReadFrequently: true});

function status(text) { $("status").textContent = text; }
function pct(a, p) { const s = [...a].sort((x, y) => x - y); return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : NaN; }
function showStats() {
  const l = stats.latencies;
  $("stats").textContent = stats.frames + " frames" + (l.length ? ", speech-to-frame latency p50 " +
    Math.round(pct(l, .5)) + " ms, p95 " + Math.round(pct(l, .95)) + " ms (from sending the speech to receiving its frame)" : "");
}
setInterval(showStats, 500);

function stopAudio() {
  if (proc) { proc.disconnect(); proc = null; }
  if (mic) { mic.getTracks().forEach((t) => t.stop()); mic = null; }
  if (audio) { audio.close(); audio = null; }
}

function finish(text) {
  stopAudio();
  $("start").disabled = false; $("stop").disabled = true;
  if (text) status(text);
}

async function draw(data) {
  const view = new DataView(data);
  const index = view.getInt32(0, true), x = view.getUint16(4, true), y = view.getUint16(6, true);
  const bitmap = await createImageBitmap(new Blob([data.slice(8)], {type: "image/jpeg"}));
  if (index < 0) {
    $("face").width = bitmap.width; $("face").height = bitmap.height;
    ctx.drawImage(bitmap, 0, 0);
    return;
  }
  ctx.drawImage(bitmap, x, y);
  // How far the mouth region is from its first frame (every 5th frame: the tests read it to see
  // the face move; every frame would cost the page CPU the server needs).
  if (index % 5) return;
  const now = ctx.getImageData(x, y, bitmap.width, bitmap.height).data;
  if (!firstBox) { firstBox = now; return; }
  let d = 0;
  for (let i = 0; i < now.length; i += 4) d += Math.abs(now[i] - firstBox[i]) + Math.abs(now[i + 1] - firstBox[i + 1]);
  stats.motion = Math.max(stats.motion, d / (now.length / 2));
}

function onFrame(data) {
  const index = new DataView(data).getInt32(0, true);
  if (index >= 0) {
    stats.frames += 1;
    // The piece of speech that holds this frame's centre, and when it was sent.
    const at = (index + 0.5) / 25 * rate;
    const piece = sent.find((p) => p[0] > at);
    if (piece) stats.latencies.push(performance.now() - piece[1]);
  }
  chain = chain.then(() => draw(data)).catch((e) => { stats.error = String(e); });
}

async function startAudio() {
  const source = audio.createMediaStreamSource(mic);
  proc = audio.createScriptProcessor(2048, 1, 1);  // ~43 ms pieces at 48 kHz (1024: more messages, measured slower)
  proc.onaudioprocess = (e) => {
    if (!ws || ws.readyState !== 1) return;
    const x = e.inputBuffer.getChannelData(0).slice();
    ws.send(x.buffer);
    samples += x.length;
    stats.samples = samples;
    sent.push([samples, performance.now()]);
  };
  source.connect(proc); proc.connect(audio.destination);  // silent: the processor writes nothing out
  status("speak now: the face follows your voice (" + stats.lookahead + " ms look-ahead)");
}

$("start").onclick = async () => {
  const file = $("photo").files[0];
  if (!file) { status("pick a photo first"); return; }
  $("start").disabled = true;
  Object.assign(stats, {frames: 0, latencies: [], motion: 0, done: false, error: "", ready: false, total: 0, samples: 0});
  sent = []; samples = 0; firstBox = null;
  try {
    mic = await navigator.mediaDevices.getUserMedia({audio: {echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
  } catch (e) { finish("no microphone: " + e.message); return; }
  audio = new AudioContext();
  rate = stats.rate = audio.sampleRate;
  status("finding the face ...");
  ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/live/ws");
  ws.binaryType = "arraybuffer";
  ws.onopen = async () => {
    ws.send(JSON.stringify({sample_rate: rate, articulation: parseFloat($("articulation").value),
                            keep_expression: $("keep").checked, still: $("still").checked}));
    ws.send(await file.arrayBuffer());
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") { onFrame(ev.data); return; }
    const m = JSON.parse(ev.data);
    if (m.error) { stats.error = m.error; finish("error: " + m.error); }
    else if (m.ready) { stats.ready = true; stats.lookahead = m.lookahead_ms; $("stop").disabled = false; startAudio(); }
    else if (m.done) { stats.done = true; stats.total = m.frames; finish("done: " + m.frames + " frames" + (m.limit ? " (the session's length limit)" : "")); }
  };
  ws.onclose = () => { if (!stats.done && !stats.error) finish("the connection closed"); };
};

$("stop").onclick = () => {
  stopAudio();
  if (ws && ws.readyState === 1) ws.send(JSON.stringify({end: true}));
  $("stop").disabled = true;
  status("finishing ...");
};
</script></body></html>
"""
