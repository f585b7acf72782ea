"""The captions page (`web/`) in a real browser: Debian's Chromium driven by Playwright,
against the real LiveKit server and worker, and its development token endpoint."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from livekit import api, rtc
from livekit.agents.types import (
    ATTRIBUTE_TRANSCRIPTION_FINAL,
    ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID,
    TOPIC_TRANSCRIPTION,
)
from playwright.async_api import Browser, Page, async_playwright, expect

from web import serve

from .livekit_server import ROOT, LiveKitServer
from .participants import CaptionListener, Speaker
from .test_worker_e2e import dispatch, speak, wait_transcriber
from .tone_stt import script_words, utterance_audio, write_wav

SCREENSHOT = ROOT / "docs" / "captions-page.png"
"""Rewritten by a run with TRANSCRIBER_UPDATE_SCREENSHOT=1; the README shows it."""

# Every state a caption row shows, in order, as a person watching the page would see it.
_RECORD_CAPTIONS = """
window.__captionStates = [];
new MutationObserver(() => {
  for (const row of document.querySelectorAll("[data-segment]")) {
    const state = {
      segment: row.dataset.segment,
      speaker: row.closest(".caption")?.querySelector(".speaker")?.textContent ?? "",
      text: row.querySelector(".text")?.textContent ?? "",
      final: row.classList.contains("final"),
    };
    const last = window.__captionStates.findLast((s) => s.segment === state.segment);
    if (!last || last.text !== state.text || last.final !== state.final) {
      window.__captionStates.push(state);
    }
  }
}).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
"""


@pytest.fixture
async def page_url(livekit_server: LiveKitServer) -> AsyncIterator[str]:
    dev = serve.DevServer(
        livekit_url=livekit_server.url,
        api_key=livekit_server.api_key,
        api_secret=livekit_server.api_secret,
    )
    runner = await serve.start(dev, port=0)
    yield f"http://{serve.HOST}:{serve.bound_port(runner)}/"
    await runner.cleanup()


@pytest.fixture
def microphone_wav(tmp_path: Path) -> Path:
    """What the browser's fake microphone plays, looped: silence, then three tone words."""
    words = utterance_audio(["golf", "hotel", "india"], pause=2.0)
    lead_in = utterance_audio([], pause=1.0)
    return write_wav(tmp_path / "microphone.wav", np.concatenate([lead_in, words]))


@pytest.fixture
async def browser(microphone_wav: Path) -> AsyncIterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed: run scripts/setup")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={microphone_wav}",
            ],
        )
        yield browser
        await browser.close()


@dataclass
class CaptionsPage:
    page: Page
    errors: list[str] = field(default_factory=list)
    """Uncaught errors of the page's scripts."""

    @classmethod
    async def open(cls, browser: Browser, url: str, room: str, **params: str) -> CaptionsPage:
        context = await browser.new_context(
            viewport={"width": 760, "height": 440}, accept_downloads=True
        )
        page = await context.new_page()
        captions_page = cls(page)
        page.on("pageerror", lambda error: captions_page.errors.append(str(error)))
        await page.add_init_script(_RECORD_CAPTIONS)
        await page.goto(f"{url}?{urllib.parse.urlencode({'room': room, **params})}")
        await expect(page.locator("#status")).to_have_attribute(
            "data-state", "connected", timeout=30_000
        )
        return captions_page

    def finals(self, speaker_name: str) -> Any:
        return self.page.locator(
            "#captions > li.caption.final", has=self.page.locator(".speaker", has_text=speaker_name)
        )

    async def final_texts(self, speaker_name: str) -> list[str]:
        return await self.finals(speaker_name).locator("> .text").all_text_contents()

    async def states(self) -> list[dict[str, Any]]:
        return await self.page.evaluate("window.__captionStates")

    async def download_transcript(self) -> str:
        async with self.page.expect_download() as download_info:
            await self.page.click("#download")
        download = await download_info.value
        return Path(await download.path()).read_text()


async def wait_until(predicate: Callable[[], Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.2)


async def test_page_shows_each_sentence_as_interims_then_a_final_under_its_speaker(
    livekit_server: LiveKitServer,
    start_worker,
    agent_name: str,
    room_name: str,
    browser: Browser,
    page_url: str,
    tmp_path: Path,
) -> None:
    worker = start_worker(TRANSCRIBER_AGENT_NAME=agent_name)
    viewer = await CaptionsPage.open(browser, page_url, room_name, name="Viewer")
    speakers = [await Speaker(livekit_server, room_name, who).join() for who in ("alice", "bob")]
    await dispatch(livekit_server, agent_name, room_name)
    await wait_transcriber(livekit_server, room_name)
    await worker.wait_tracks(len(speakers))

    scripts = {"alice": script_words(3, seed=7), "bob": script_words(2, seed=8)}
    await asyncio.gather(*(speak(s, scripts[s.identity], tmp_path) for s in speakers))
    for who, script in scripts.items():
        await expect(viewer.finals(who)).to_have_count(len(script), timeout=20_000)
        assert await viewer.final_texts(who) == [" ".join(words) for words in script]

    states = await viewer.states()
    for segment in {s["segment"] for s in states}:
        shown = [s for s in states if s["segment"] == segment]
        assert len({s["speaker"] for s in shown}) == 1
        assert not shown[0]["final"], f"segment {segment} showed no interim before its final"
        assert shown[-1]["final"] and sum(s["final"] for s in shown) == 1
    await expect(viewer.page.locator("li.caption.interim")).to_have_count(0)

    transcript = await viewer.download_transcript()
    assert transcript.startswith("WEBVTT\n")
    cues = [line for line in transcript.splitlines() if line.startswith("<v ")]
    for who, script in scripts.items():
        assert [c for c in cues if c.startswith(f"<v {who}>")] == [
            f"<v {who}>{' '.join(words)}" for words in script
        ]

    shot = await viewer.page.screenshot(path=tmp_path / "captions-page.png")
    assert shot.startswith(b"\x89PNG") and len(shot) < 200_000
    if os.environ.get("TRANSCRIBER_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.write_bytes(shot)
    assert viewer.errors == []
    for speaker in speakers:
        await speaker.leave()


async def test_late_joining_page_marks_the_earlier_captions_it_is_sent(
    livekit_server: LiveKitServer,
    start_worker,
    agent_name: str,
    room_name: str,
    browser: Browser,
    page_url: str,
    tmp_path: Path,
) -> None:
    worker = start_worker(TRANSCRIBER_AGENT_NAME=agent_name)
    present = await CaptionListener(livekit_server, room_name).join()
    alice = await Speaker(livekit_server, room_name, "alice").join()
    await dispatch(livekit_server, agent_name, room_name)
    await wait_transcriber(livekit_server, room_name)
    await worker.wait_tracks(1)
    before = script_words(2, seed=31)
    await speak(alice, before, tmp_path)
    await present.wait_for(lambda: len(present.finals("alice")) >= 2)

    late = await CaptionsPage.open(browser, page_url, room_name, name="Late")
    earlier = late.page.locator("#captions > li.caption.history.final")
    await expect(earlier).to_have_count(2, timeout=10_000)
    assert await earlier.locator("> .text").all_text_contents() == [" ".join(w) for w in before]
    assert await earlier.locator("> .speaker").all_text_contents() == ["alice", "alice"]
    await expect(earlier.locator("> .earlier")).to_have_text(["earlier", "earlier"])

    after = script_words(1, seed=32)
    await speak(alice, after, tmp_path)
    await expect(late.finals("alice")).to_have_count(3, timeout=20_000)
    live = late.page.locator("#captions > li.caption.final:not(.history)")
    await expect(live.locator("> .text")).to_have_text([" ".join(after[0])])
    await expect(live.locator(".earlier")).to_have_count(0)
    assert late.errors == []
    for who in (alice, present):
        await who.leave()


async def test_browser_microphone_is_captioned_under_its_own_name(
    livekit_server: LiveKitServer,
    start_worker,
    agent_name: str,
    room_name: str,
    browser: Browser,
    page_url: str,
) -> None:
    worker = start_worker(TRANSCRIBER_AGENT_NAME=agent_name)
    viewer = await CaptionsPage.open(browser, page_url, room_name, name="Viewer")
    await dispatch(livekit_server, agent_name, room_name)
    await wait_transcriber(livekit_server, room_name)

    talker = await CaptionsPage.open(
        browser, page_url, room_name, name="Bea Talks", identity="bea", microphone="1"
    )
    await expect(talker.page.locator("#microphone")).to_have_attribute("aria-pressed", "true")
    await worker.wait_tracks(1)

    # the microphone file loops, and its first pass may have played before the transcriber
    # listened: one sentence is heard whole, and every one heard is words of the file's
    heard_whole = viewer.finals("Bea Talks").filter(has_text="golf hotel india")
    await expect(heard_whole.first).to_be_visible(timeout=45_000)
    heard = await viewer.final_texts("Bea Talks")
    assert all(text in "golf hotel india" for text in heard), heard
    await expect(
        talker.finals("Bea Talks").filter(has_text="golf hotel india").first
    ).to_be_visible()


class Impostor:
    """A participant that writes `lk.transcription` streams itself, to show how the page
    renders any caption a participant can send."""

    def __init__(self, server: LiveKitServer, room: str, identity: str = "mallory") -> None:
        self.server, self.room_name, self.identity = server, room, identity
        self.room = rtc.Room()

    async def __aenter__(self) -> Impostor:
        await self.room.connect(
            self.server.url,
            self.server.token(self.identity, self.room_name),
            rtc.RoomOptions(auto_subscribe=False),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.room.disconnect()

    async def caption(
        self, segment_id: str, text: str, *, final: bool = True, **extra: str
    ) -> None:
        await self.room.local_participant.send_text(
            text,
            topic=TOPIC_TRANSCRIPTION,
            attributes={
                ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID: segment_id,
                ATTRIBUTE_TRANSCRIPTION_FINAL: "true" if final else "false",
                **extra,
            },
        )


async def test_caption_text_is_shown_as_text_never_as_html(
    livekit_server: LiveKitServer, room_name: str, browser: Browser, page_url: str
) -> None:
    viewer = await CaptionsPage.open(browser, page_url, room_name)
    hostile = '<img src=x onerror="window.__injected=1"> --> & <b>bold</b>'
    async with Impostor(livekit_server, room_name) as mallory:
        await mallory.caption("seg-x", hostile)
        await expect(viewer.finals("mallory")).to_have_count(1, timeout=15_000)

    assert await viewer.final_texts("mallory") == [hostile]
    assert await viewer.page.locator("#captions img, #captions b").count() == 0
    assert await viewer.page.evaluate("window.__injected") is None
    transcript = await viewer.download_transcript()
    cue = [line for line in transcript.splitlines() if line.startswith("<v mallory>")]
    escaped = '&lt;img src=x onerror="window.__injected=1"&gt; --&gt; &amp; &lt;b&gt;bold&lt;/b&gt;'
    assert cue == [f"<v mallory>{escaped}"]
    assert transcript.count("-->") == 1  # the cue's timing line only


async def test_interim_text_is_provisional_until_its_final_replaces_it(
    livekit_server: LiveKitServer, room_name: str, browser: Browser, page_url: str
) -> None:
    viewer = await CaptionsPage.open(browser, page_url, room_name)
    row = viewer.page.locator('#captions > li.caption[data-segment="seg-i"]')
    async with Impostor(livekit_server, room_name, "ana") as ana:
        await ana.caption("seg-i", "good mor", final=False)
        await expect(row).to_have_class("caption interim", timeout=15_000)
        await expect(row.locator("> .text")).to_have_css("font-style", "italic")
        await ana.caption("seg-i", "good morning")
        await expect(row).to_have_class("caption final")
        await ana.caption("seg-i", "good mo", final=False)  # late, after its final
        await asyncio.sleep(1)
    await expect(row.locator("> .text")).to_have_text("good morning")
    await expect(row.locator("> .text")).to_have_css("font-style", "normal")
    await expect(viewer.page.locator("#captions > li")).to_have_count(1)


async def test_translations_are_shown_beside_their_original(
    livekit_server: LiveKitServer, room_name: str, browser: Browser, page_url: str
) -> None:
    viewer = await CaptionsPage.open(browser, page_url, room_name)
    async with Impostor(livekit_server, room_name, "ana") as ana:
        await ana.caption("seg-1", "good morning", final=False, language="en")
        await ana.caption("seg-1", "good morning everyone", language="en")
        await ana.caption(
            "seg-1-fr",
            "bonjour à tous",
            translated="true",
            language="fr",
            **{"transcriber.source_segment_id": "seg-1"},
        )
        # a translation that overtakes its original still ends up beside it
        await ana.caption(
            "seg-2-de",
            "danke",
            translated="true",
            language="de",
            **{"transcriber.source_segment_id": "seg-2"},
        )
        await ana.caption("seg-2", "thank you", language="en")
        await expect(viewer.page.locator(".translation.final")).to_have_count(2, timeout=15_000)
        await expect(viewer.finals("ana")).to_have_count(2)

    page = viewer.page
    first = page.locator('li.caption[data-segment="seg-1"]')
    await expect(first.locator("> .text")).to_have_text("good morning everyone")
    await expect(first.locator('.translation[lang="fr"] .text')).to_have_text("bonjour à tous")
    second = page.locator('li.caption[data-segment="seg-2"]')
    await expect(second.locator('.translation[lang="de"] .text')).to_have_text("danke")
    await expect(page.locator("#captions > li")).to_have_count(2)


async def test_language_picker_sets_the_participant_language_attribute(
    livekit_server: LiveKitServer, room_name: str, browser: Browser, page_url: str
) -> None:
    viewer = await CaptionsPage.open(browser, page_url, room_name, identity="pierre")
    await viewer.page.select_option("#language", "fr")

    async def language_is_fr() -> bool:
        async with livekit_server.api() as lkapi:
            listing = await lkapi.room.list_participants(
                api.ListParticipantsRequest(room=room_name)
            )
        return any(
            p.identity == "pierre" and p.attributes.get("language") == "fr"
            for p in listing.participants
        )

    await wait_until(language_is_fr, timeout=15)


def _dev_server() -> serve.DevServer:
    return serve.DevServer(livekit_url="ws://127.0.0.1:7880", api_key="devkey", api_secret="s" * 32)


async def _token_through_middleware(
    remote: str, host: str = "127.0.0.1:8090"
) -> web.StreamResponse:
    app = serve.build_app(_dev_server())
    request = make_mocked_request(
        "GET", "/token?room=r1&identity=alice", headers={"Host": host}, app=app
    ).clone(remote=remote)
    return await serve.loopback_only(request, serve.token)


async def test_token_endpoint_refuses_clients_that_are_not_loopback() -> None:
    for remote in ("203.0.113.7", "10.0.0.5", "::ffff:192.0.2.1", "2001:db8::1", "unknown"):
        with pytest.raises(web.HTTPForbidden):
            await _token_through_middleware(remote)
    for remote in ("127.0.0.1", "::1"):
        response = await _token_through_middleware(remote)
        assert isinstance(response, web.Response) and response.status == 200


async def test_token_endpoint_mints_a_room_token_for_loopback_clients_only_by_loopback_name(
    page_url: str, livekit_server: LiveKitServer
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{page_url}token", params={"room": "r1", "identity": "ann", "name": "Ann"}
        ) as r:
            assert r.status == 200
            body = await r.json()
        async with http.get(f"{page_url}token", params={"room": "r1", "identity": "<script>"}) as r:
            assert r.status == 400
        async with http.get(f"{page_url}token", headers={"Host": "rebound.example"}) as r:
            assert r.status == 403
    claims = api.TokenVerifier(livekit_server.api_key, livekit_server.api_secret).verify(
        body["token"]
    )
    assert (claims.identity, claims.name, claims.video.room) == ("ann", "Ann", "r1")
    assert body["url"] == livekit_server.url


async def test_page_server_listens_on_loopback_only(page_url: str) -> None:
    port = int(urllib.parse.urlsplit(page_url).port or 0)
    listening = [
        c.laddr
        for c in psutil.Process().net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]
    assert listening and all(serve.is_loopback(addr.ip) for addr in listening)


async def token_endpoints_served_by(pid: int) -> list[str]:
    """Every address the process tree listens on that answers like the page server."""
    root = psutil.Process(pid)
    listening = {
        f"[::1]:{c.laddr.port}" if ":" in c.laddr.ip else f"127.0.0.1:{c.laddr.port}"
        for p in [root, *root.children(recursive=True)]
        for c in p.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN
    }
    assert listening, f"process {pid} listens nowhere"
    found = []
    async with aiohttp.ClientSession() as http:
        for address in listening:
            async with http.get(f"http://{address}/token?room=r&identity=i") as token:
                async with http.get(f"http://{address}/captions.js") as script:
                    if token.status == 200 or script.status == 200:
                        found.append(address)
    return found


async def test_worker_in_start_mode_serves_no_token_endpoint(start_worker) -> None:
    worker = start_worker()
    assert await token_endpoints_served_by(worker.process.pid) == []
