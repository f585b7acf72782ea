// The captions page: joins a LiveKit room and shows the transcriber's captions.
//
// Captions are `lk.transcription` text streams sent on behalf of the speaker; each update
// carries its segment's full text so far, and the final replaces the interims of the same
// `lk.segment_id`. Caption text is participant-controlled: it only ever enters the page as
// text (textContent), never as HTML.
"use strict";

const { Room, RoomEvent } = LivekitClient;

const TOPIC = "lk.transcription";
const MAX_SEGMENTS = 2000; // the oldest rows go first; a long meeting never grows the page unbounded
const MAX_TEXT = 5000;

const el = {
  form: document.getElementById("join"),
  room: document.getElementById("room"),
  name: document.getElementById("name"),
  join: document.getElementById("join-button"),
  microphone: document.getElementById("microphone"),
  language: document.getElementById("language"),
  download: document.getElementById("download"),
  status: document.getElementById("status"),
  captions: document.getElementById("captions"),
};

/** segment id -> { id, speaker, text, final, history, translated, language, source, firstAt, finalAt, row, textEl } */
const segments = new Map();
/** original segment id -> translation segments that arrived before it */
const waitingForOriginal = new Map();
let room = null;
let joinedAt = performance.now();

function setStatus(state, message) {
  el.status.dataset.state = state;
  el.status.textContent = message;
}

function speakerColour(identity) {
  let hash = 0;
  for (const ch of identity) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360} 60% 36%)`;
}

function speakerName(identity) {
  const participant = room?.getParticipantByIdentity(identity);
  return participant?.name || identity;
}

function parseCaption(text, attributes, identity) {
  const a = attributes ?? {};
  return {
    id: a["lk.segment_id"] ?? "",
    speaker: identity,
    text: text.slice(0, MAX_TEXT),
    final: a["lk.transcription_final"] === "true",
    history: a["transcriber.history"] === "true",
    translated: a["translated"] === "true",
    language: (a["language"] ?? "").slice(0, 16),
    source: a["transcriber.source_segment_id"] ?? "",
  };
}

function span(className, text) {
  const node = document.createElement("span");
  node.className = className;
  node.textContent = text;
  return node;
}

function newOriginalRow(caption) {
  const row = document.createElement("li");
  row.className = "caption";
  row.dataset.segment = caption.id;
  row.dataset.speaker = caption.speaker;
  row.style.setProperty("--speaker-colour", speakerColour(caption.speaker));
  row.append(span("speaker", speakerName(caption.speaker)));
  if (caption.history) {
    row.classList.add("history");
    row.append(span("earlier", "earlier"));
  }
  const textEl = span("text", "");
  const translations = document.createElement("ul");
  translations.className = "translations";
  row.append(textEl, translations);
  return { row, textEl };
}

function newTranslationRow(caption) {
  const row = document.createElement("li");
  row.className = "translation";
  row.dataset.segment = caption.id;
  row.dataset.source = caption.source;
  row.lang = caption.language;
  row.append(span("language", caption.language));
  const textEl = span("text", "");
  row.append(textEl);
  return { row, textEl };
}

function placeTranslation(segment) {
  const original = segments.get(segment.source);
  if (original && !original.translated) {
    original.row.querySelector(".translations").append(segment.row);
    return;
  }
  // its original is not on the page (yet): show it on its own until that arrives
  const standalone = document.createElement("li");
  standalone.className = "caption standalone";
  standalone.style.setProperty("--speaker-colour", speakerColour(segment.speaker));
  standalone.append(span("speaker", speakerName(segment.speaker)));
  const list = document.createElement("ul");
  list.className = "translations";
  list.append(segment.row);
  standalone.append(list);
  el.captions.append(standalone);
  const waiting = waitingForOriginal.get(segment.source) ?? [];
  waiting.push({ segment, standalone });
  waitingForOriginal.set(segment.source, waiting);
}

function adoptWaitingTranslations(original) {
  for (const { segment, standalone } of waitingForOriginal.get(original.id) ?? []) {
    original.row.querySelector(".translations").append(segment.row);
    standalone.remove();
  }
  waitingForOriginal.delete(original.id);
}

function addSegment(caption) {
  const segment = { ...caption, text: "", final: false, firstAt: performance.now(), finalAt: null };
  Object.assign(segment, caption.translated ? newTranslationRow(caption) : newOriginalRow(caption));
  segments.set(caption.id, segment);
  if (caption.translated) {
    placeTranslation(segment);
  } else {
    el.captions.append(segment.row);
    adoptWaitingTranslations(segment);
  }
  while (segments.size > MAX_SEGMENTS) {
    const [oldestId, oldest] = segments.entries().next().value;
    const top = oldest.row.closest("#captions > li");
    (top?.classList.contains("standalone") ? top : oldest.row).remove();
    segments.delete(oldestId);
    waitingForOriginal.delete(oldest.translated ? oldest.source : oldestId);
  }
  return segment;
}

function showCaption(caption) {
  if (!caption.id) return;
  const segment = segments.get(caption.id) ?? addSegment(caption);
  if (segment.final) return; // a final is the segment's last word; late interims change nothing
  segment.text = caption.text;
  segment.final = caption.final;
  segment.textEl.textContent = caption.text;
  segment.row.classList.toggle("interim", !caption.final);
  segment.row.classList.toggle("final", caption.final);
  if (caption.final) segment.finalAt = performance.now();
  if (!caption.translated) segment.row.scrollIntoView({ block: "nearest" });
}

async function onCaptionStream(reader, participantInfo) {
  let text;
  try {
    text = await reader.readAll();
  } catch (error) {
    console.warn(`caption stream ${reader.info.id} incomplete: ${error.message}`);
    return;
  }
  showCaption(parseCaption(text, reader.info.attributes, participantInfo.identity));
}

// --- WebVTT ---------------------------------------------------------------------------

function vttTime(ms) {
  const total = Math.max(0, Math.round(ms));
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  const h = Math.floor(total / 3600000), m = Math.floor(total / 60000) % 60;
  const s = Math.floor(total / 1000) % 60;
  return `${pad(h)}:${pad(m)}:${pad(s)}.${pad(total % 1000, 3)}`;
}

/** Cue text: `&`, `<` and `>` escaped (so no text can form `-->` or a tag), one line. */
function vttText(text) {
  return text
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/\s*[\r\n]+\s*/g, " ");
}

function transcriptVtt() {
  const finals = [...segments.values()].filter((s) => s.final).sort((a, b) => a.firstAt - b.firstAt);
  const cues = finals.map((s, i) => {
    const start = s.firstAt - joinedAt;
    const end = Math.max(s.finalAt - joinedAt, start + 1000);
    const voice = vttText(speakerName(s.speaker));
    const language = s.language.replace(/[^A-Za-z0-9-]/g, "");
    const text = s.translated && language
      ? `<lang ${language}>${vttText(s.text)}</lang>`
      : vttText(s.text);
    return `${i + 1}\n${vttTime(start)} --> ${vttTime(end)}\n<v ${voice}>${text}\n`;
  });
  return ["WEBVTT\n", ...cues].join("\n");
}

function downloadTranscript() {
  const blob = new Blob([transcriptVtt()], { type: "text/vtt" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `transcript-${room?.name || el.room.value || "captions"}.vtt`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// --- joining, microphone, language ------------------------------------------------------

function randomIdentity() {
  return `guest-${Math.random().toString(16).slice(2, 8)}`;
}

function identityFor(name) {
  const slug = name.toLowerCase().replace(/[^a-z0-9_.-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40);
  return slug ? `${slug}-${Math.random().toString(16).slice(2, 6)}` : randomIdentity();
}

async function fetchToken(roomName, identity, name) {
  const query = new URLSearchParams({ room: roomName, identity, name });
  const response = await fetch(`/token?${query}`);
  if (!response.ok) throw new Error((await response.text()).trim() || response.statusText);
  return response.json();
}

async function join(roomName, name, identity) {
  el.join.disabled = true;
  setStatus("connecting", `Joining ${roomName}…`);
  try {
    const { url, token } = await fetchToken(roomName, identity, name);
    room = new Room();
    room.registerTextStreamHandler(TOPIC, onCaptionStream);
    room.on(RoomEvent.Disconnected, () => {
      setStatus("disconnected", "Disconnected");
      el.microphone.disabled = el.language.disabled = true;
      el.join.disabled = false;
    });
    joinedAt = performance.now();
    await room.connect(url, token);
    setStatus("connected", `In ${room.name} as ${name || identity}`);
    el.microphone.disabled = el.language.disabled = false;
    if (el.language.value) await setLanguage(el.language.value);
  } catch (error) {
    setStatus("error", `Could not join: ${error.message}`);
    el.join.disabled = false;
  }
}

async function toggleMicrophone() {
  const on = el.microphone.getAttribute("aria-pressed") !== "true";
  el.microphone.disabled = true;
  try {
    await room.localParticipant.setMicrophoneEnabled(on);
    el.microphone.setAttribute("aria-pressed", String(on));
    el.microphone.textContent = on ? "Microphone on" : "Microphone off";
  } catch (error) {
    setStatus("error", `Microphone: ${error.message}`);
  } finally {
    el.microphone.disabled = false;
  }
}

/** The transcriber reads each participant's `language` attribute to choose their captions. */
async function setLanguage(language) {
  await room.localParticipant.setAttributes({ language });
}

el.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = el.name.value.trim();
  join(el.room.value.trim(), name, identityFor(name));
});
el.microphone.addEventListener("click", toggleMicrophone);
el.language.addEventListener("change", () => {
  setLanguage(el.language.value).catch((error) => setStatus("error", `Language: ${error.message}`));
});
el.download.addEventListener("click", downloadTranscript);

// `?room=NAME` joins at once (the URL scripts/run-local prints); `name`, `identity`,
// `language` and `microphone=1` preset the rest.
const params = new URLSearchParams(location.search);
if (params.get("name")) el.name.value = params.get("name");
if (params.get("language")) el.language.value = params.get("language");
if (params.get("room")) {
  el.room.value = params.get("room");
  const name = el.name.value.trim();
  join(el.room.value, name, params.get("identity") || identityFor(name)).then(() => {
    if (params.get("microphone") === "1" && room?.state === "connected") toggleMicrophone();
  });
}
