// The browser client: what `voicechat talk` does, in a page. DOM, WebSocket (protocol v1, see
// docs/protocol.md) and the player; the pure logic lives in audio-core.js and text-core.js.

import { decodeBase64, encodeBase64, parseWav } from "./audio-core.js";
import { Microphone } from "./mic.js";
import { Player } from "./player.js";
import { locateUnit } from "./text-core.js";

const CHAT_PATH = "/v1/chat/stream";
const PROTOCOL = "voicechat.v1";
const TOKEN_PREFIX = "voicechat.token.";
const TOKEN_KEY = "voicechat.token";
const BACKOFF_S = [0.5, 1, 2, 4, 8]; // then every 8 s, as `talk` does
const FOLLOW_MS = 50; // how often the highlight follows the playback position
// The browser cancels the page's own voice in the microphone, so the server need not guard
// against it, and a shorter spell of speech over an answer interrupts it (full duplex).
const SPEECH_SETTINGS = { echo_guard: false, barge_in_ms: 300 };
const STT_OFF = "speech input is off on this server";

const ERROR_TEXT = {
  llm_failed: "The answer failed: the language model stopped with an error.",
  internal: "The answer failed: the server hit a bug; its log says more.",
  tts_failed: "A sentence could not be spoken; the answer goes on.",
  rate_limited: "Too many messages in a short time; that one was dropped. Wait a moment.",
  too_large: "That message is too long for the server; shorten it.",
  bad_message: "The server could not use that message.",
  bad_json: "The server could not read a message from this page.",
  unknown_type: "The server does not know a message this page sent.",
  speech_input_off: "Speech input is off on this server.",
};
const REFUSED_MESSAGE = new Set(["too_large", "rate_limited", "bad_message"]); // no answer comes
const FAILED_ANSWER = new Set(["llm_failed", "internal"]); // response.done "failed" follows
// response.done's `truncated`: what ended the answer early (its `text` is then what was spoken).
const TRUNCATED = {
  repetition: "cut: it began repeating itself",
  max_speech: "cut at the spoken length limit",
  max_tokens: "cut at the token limit",
  max_audio: "cut at the audio limit",
};
const SILENT_NOTICE = "The answer had nothing to say aloud (only emoji, symbols or code).";

const $ = (id) => document.getElementById(id);
const ui = {
  transcript: $("transcript"),
  empty: $("empty"),
  composer: $("composer"),
  input: $("message"),
  hint: $("hint"),
  stop: $("stop"),
  mute: $("mute"),
  status: $("status"),
  mic: $("mic"),
  voice: $("voice"),
  micLevel: $("mic-level"),
  micState: $("mic-state"),
  micNote: $("mic-note"),
  connection: $("connection"),
  connectionText: $("connection-text"),
  backends: $("backends"),
  banner: $("banner"),
  tokenForm: $("token-form"),
  tokenHint: $("token-hint"),
  tokenInput: $("token"),
};

const chat = {
  connection: "connecting", // connecting | connected | offline | token
  connectionText: "connecting…",
  banner: "",
  socket: null,
  sessionId: null, // the conversation; kept across reconnects to resume it
  ownSessionId: null, // this connection's own session: the conversation if the server forgot ours
  backends: null,
  failures: 0,
  retry: null, // the timer of the next attempt
  turns: [], // {role: "user", text} and answers, in order
  answers: new Map(), // response_id -> answer
  pending: new Map(), // our message id -> answer still waiting for its response.created
  audioAnswer: null, // the one response whose audio may play; chunks of others are dropped
  playingAnswer: null, // the response whose audio was pushed last (it may still be playing)
  heldAnswer: null, // the response whose playback response.audio.paused holds
  ignoredChunks: 0,
  notices: [],
  lastMetrics: null,
  messages: 0,
};

const speech = {
  stt: null, // the server's speech recognition (session.created); null: speech input is off
  known: false, // a session.created has said whether it is on
  inputAudio: null, // the session's input_audio settings, as the server last reported them
  hearing: false, // speech_started came; its transcript (or no_speech) has not
  stillYourTurn: false, // end_of_turn said the thought sounds unfinished; the turn goes on
  committed: false, // the turn ended (speech_stopped, committed); its transcript has not come
  label: "", // listening | hearing you | still your turn… | thinking | speaking | paused | ...
  history: [], // every label shown, in order (for the hook)
  note: "", // a quiet line next to the state: "didn't catch that", why the mic stopped
  level: 0,
  peak: 0, // the loudest frame since the microphone started
  framesSent: 0,
  samplesSent: 0,
  framesDropped: 0, // captured while not connected
  frameBytes: {}, // size in bytes -> frames sent (each should be 40 ms: 1280 bytes)
  truncates: [], // the response.truncate messages sent
  truncated: [], // the response.truncated answers
};

const player = new Player({ onStateChange: renderStatus });
const mic = new Microphone({ onFrame: onMicFrame, onStateChange: onMicState });

// --- the token ----------------------------------------------------------------------------

const tokenStore = {
  memory: null, // when sessionStorage is disabled
  get() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch {
      return this.memory;
    }
  },
  set(token) {
    this.memory = token;
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // kept in memory only
    }
  },
};

/** `#token=...` in the address: keep it for this tab and take it out of the address bar. */
function takeTokenFromFragment() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (token === null) return;
  tokenStore.set(token);
  history.replaceState(history.state, "", location.pathname + location.search);
}

function askForToken(hint) {
  setConnection("token", "token needed");
  ui.tokenHint.textContent = hint;
  ui.tokenForm.hidden = false;
  ui.tokenInput.focus();
}

ui.tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const token = ui.tokenInput.value.trim();
  if (!token) return;
  tokenStore.set(token);
  ui.tokenInput.value = "";
  ui.tokenForm.hidden = true;
  ui.input.focus();
  chat.failures = 0;
  connect();
});

// --- the connection -----------------------------------------------------------------------

function chatUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${CHAT_PATH}`;
}

function connect() {
  clearTimeout(chat.retry);
  const token = tokenStore.get();
  const protocols = token ? [PROTOCOL, TOKEN_PREFIX + token] : [PROTOCOL];
  let socket;
  try {
    socket = new WebSocket(chatUrl(), protocols); // the token travels only as a subprotocol
  } catch {
    tokenStore.set(null);
    askForToken(
      "That token has characters a browser cannot send (only letters, digits and " +
        "!#$%&'*+-.^_`|~ work). Ask for another one.",
    );
    return;
  }
  chat.socket = socket;
  let created = false;
  setConnection("connecting", chat.failures ? "reconnecting…" : "connecting…");
  socket.addEventListener("message", (event) => {
    if (socket !== chat.socket) return;
    const message = parseFrame(event.data);
    if (message?.type === "session.created") {
      created = true;
      onSessionCreated(message);
    } else if (message) {
      applyEvent(message);
      renderMic(player.stats()); // a state such as "thinking" may last less than one poll
    }
  });
  socket.addEventListener("close", (event) => {
    if (socket === chat.socket) onClosed(event, created, token);
  });
}

function parseFrame(data) {
  try {
    const message = JSON.parse(data);
    return message && typeof message === "object" ? message : null;
  } catch {
    return null;
  }
}

function onSessionCreated(message) {
  chat.failures = 0;
  chat.backends = { llm: String(message.llm), tts: String(message.tts) };
  const resuming = chat.sessionId !== null && chat.turns.length > 0;
  if (resuming) {
    send({ type: "session.resume", session_id: chat.sessionId });
  } else {
    if (chat.sessionId !== null) notice("Reconnected.");
    chat.sessionId = message.session_id;
  }
  chat.ownSessionId = message.session_id;
  speech.known = true;
  speech.stt = typeof message.stt === "string" && message.stt ? message.stt : null;
  speech.inputAudio = message.input_audio ?? null;
  speech.hearing = speech.stillYourTurn = speech.committed = false;
  if (speech.stt) {
    send({ type: "session.update", ...SPEECH_SETTINGS });
  } else if (mic.state !== "off") {
    mic.stop(STT_OFF);
  }
  setBanner("");
  setHint("");
  setConnection("connected", "connected");
}

async function onClosed(event, created, token) {
  chat.socket = null;
  speech.hearing = speech.stillYourTurn = speech.committed = false;
  stopLocalAudio();
  interruptAnswers();
  if (event.code === 1008 && !created) {
    tokenStore.set(null);
    askForToken(
      token
        ? "The server refused that token. Check it and enter it again."
        : "This server needs an access token. Enter it, or open the page with #token=... " +
          "in its address.",
    );
    setBanner(token ? "The server refused the token." : "");
    return;
  }
  if (created) {
    notice(`Disconnected: ${closeReason(event)}`);
  } else {
    setBanner(await diagnose());
  }
  scheduleReconnect();
}

function closeReason(event) {
  if (event.code === 1001) return "the server is shutting down.";
  if (event.code === 1000 && event.reason === "idle timeout") return "idle for too long.";
  if (event.reason) return `${event.reason} (${event.code}).`;
  return "the connection to the server was lost.";
}

/** Why a connection failed before its session: browsers hide the HTTP status, /healthz tells. */
async function diagnose() {
  let health;
  try {
    const response = await fetch("/healthz", { cache: "no-store" });
    health = await response.json();
  } catch {
    return `Cannot reach the server at ${location.host}. Is voicechat serve running?`;
  }
  const { sessions, max_connections: max } = health;
  if (sessions >= max) return `The server is full (${sessions} of ${max} connections in use).`;
  return (
    "The server refused the connection. If this page was opened by a host name, " +
    `the server needs --allow-origin ${location.origin}.`
  );
}

function scheduleReconnect() {
  const delay = BACKOFF_S[Math.min(chat.failures, BACKOFF_S.length - 1)];
  chat.failures += 1;
  setConnection("offline", `offline, retrying in ${delay} s`);
  chat.retry = setTimeout(connect, delay * 1000);
}

function send(message) {
  chat.socket.send(JSON.stringify(message));
}

function connected() {
  return chat.connection === "connected" && chat.socket?.readyState === WebSocket.OPEN;
}

// --- events from the server ---------------------------------------------------------------

function applyEvent(message) {
  switch (message.type) {
    case "response.created":
      return onResponseCreated(message);
    case "text.delta":
      return onTextDelta(message);
    case "audio.chunk":
      return onAudioChunk(message);
    case "response.done":
      return onResponseDone(message);
    case "session.resumed":
      chat.sessionId = message.session_id;
      return notice(`Reconnected: the conversation continues (${message.messages} messages kept).`);
    case "error":
      return onError(message);
    case "input_audio.speech_started":
      return onSpeechStarted();
    case "input_audio.end_of_turn":
      // complete=false: the thought sounds unfinished, the server waits longer for more;
      // true (about to end) or null (not judged: the silence rule decides): hearing the user.
      speech.stillYourTurn = message.complete === false;
      return;
    case "input_audio.speech_stopped":
    case "input_audio.committed":
      speech.stillYourTurn = false;
      speech.committed = true; // until its transcript (or an error about the turn)
      return;
    case "response.audio.paused":
      return onAudioPaused(message);
    case "response.audio.resumed":
      return onAudioResumed(message);
    case "input_audio.transcript":
      return onTranscript(message);
    case "session.updated":
      speech.inputAudio = message.input_audio ?? speech.inputAudio;
      return;
    case "response.truncated":
      return onTruncated(message);
  }
}

function onResponseCreated(message) {
  const interrupted = chat.heldAnswer !== null; // a held answer turned out interrupted
  if (interrupted) interruptPlayback();
  let answer = chat.pending.get(message.in_reply_to);
  chat.pending.delete(message.in_reply_to);
  answer ??= addAnswer(); // an answer we did not ask for on this page (a shared conversation)
  if (interrupted) answer.silenced = false; // the old one stops, this new one plays
  answer.responseId = message.response_id;
  chat.answers.set(answer.responseId, answer);
  if (!answer.silenced) chat.audioAnswer = answer.responseId;
}

function onTextDelta(message) {
  const answer = chat.answers.get(message.response_id);
  if (!answer) return;
  answer.text += message.text;
  renderAnswer(answer);
}

function onAudioChunk(message) {
  const answer = chat.answers.get(message.response_id);
  if (!answer || message.response_id !== chat.audioAnswer) {
    chat.ignoredChunks += 1; // a stopped answer's late audio
    return;
  }
  if (message.text) answer.units[message.segment] = message.text;
  let wav;
  try {
    wav = parseWav(decodeBase64(message.audio));
  } catch (error) {
    notice(`Skipped an unplayable audio chunk: ${error.message}.`);
    return;
  }
  answer.chunks += 1;
  chat.playingAnswer = answer.responseId;
  player.push(answer.responseId, message.segment, wav.samples, wav.sampleRate);
}

function onResponseDone(message) {
  const answer = chat.answers.get(message.response_id);
  if (!answer) return;
  if (message.response_id === chat.heldAnswer && message.status !== "completed") {
    interruptPlayback(); // held, then cancelled: it never plays on
  }
  answer.status = message.status;
  answer.text = typeof message.text === "string" ? message.text : answer.text;
  answer.truncated = message.truncated ?? null;
  answer.metrics = pickMetrics(message.metrics);
  chat.lastMetrics = answer.metrics;
  if (message.response_id === chat.audioAnswer) {
    player.end(answer.responseId);
    chat.audioAnswer = null;
  }
  if (message.status === "failed" && !answer.failureShown) notice("The answer failed.");
  if (message.silent) notice(SILENT_NOTICE);
  if (answer.heardMs !== null) sendTruncate(answer);
  renderAnswer(answer);
  renderStatus();
}

function pickMetrics(metrics) {
  const value = (key) => (typeof metrics?.[key] === "number" ? metrics[key] : null);
  return {
    firstTextMs: value("first_text_ms"),
    firstAudioMs: value("first_audio_ms"),
    totalMs: value("total_ms"),
  };
}

function onError(message) {
  if (message.code === "unknown_session") {
    chat.sessionId = chat.ownSessionId;
    notice("Reconnected, but the server no longer knows our conversation: a new one started.");
    return;
  }
  if (message.code === "no_speech") {
    speech.hearing = speech.stillYourTurn = speech.committed = false;
    setMicNote("Didn't catch that.");
    return; // quiet: not a notice in the transcript
  }
  if (message.item_id) speech.hearing = speech.stillYourTurn = speech.committed = false;
  if (message.code === "speech_input_off") {
    speech.stt = null;
    mic.stop(STT_OFF);
  }
  const answer = chat.answers.get(message.response_id);
  if (answer && FAILED_ANSWER.has(message.code)) answer.failureShown = true; // said once
  const typed = [...chat.pending].find(([, answer]) => !answer.voice); // not an audio frame's
  if (!message.response_id && REFUSED_MESSAGE.has(message.code) && typed) {
    const [id, refused] = typed;
    chat.pending.delete(id);
    refused.status = "refused";
    renderAnswer(refused);
  }
  const text = ERROR_TEXT[message.code] ?? `The server reported an error (${message.code}).`;
  notice(message.message ? `${text} (${message.message})` : text);
}

// --- what the user does -------------------------------------------------------------------

function sendMessage() {
  const text = ui.input.value.trim();
  if (!text) return;
  if (!connected()) {
    setHint("Not connected: your message is kept. Send it again once connected.");
    return;
  }
  setHint("");
  stopLocalAudio(); // barge-in: the old answer goes quiet at once; the server cancels it
  addTurn({ role: "user", text });
  const id = `m${++chat.messages}`;
  chat.pending.set(id, addAnswer());
  send({ type: "user.message", text, id });
  ui.input.value = "";
  fitInput();
}

function stopSpeaking() {
  stopLocalAudio();
  if (connected()) send({ type: "response.cancel" });
}

/**
 * Flush the player and make sure nothing more of the answers in flight is played. Resolves
 * with the player's flush report (which answer was playing, how much of it was heard).
 */
function stopLocalAudio() {
  const report = player.flush(); // also ends a hold
  chat.audioAnswer = null;
  chat.playingAnswer = null;
  chat.heldAnswer = null;
  for (const answer of [...chat.answers.values(), ...chat.pending.values()]) {
    if (!answer.status) answer.silenced = true;
  }
  return report;
}

function interruptAnswers() {
  for (const answer of [...chat.answers.values(), ...chat.pending.values()]) {
    if (!answer.status) {
      answer.status = "interrupted";
      renderAnswer(answer);
    }
  }
  chat.pending.clear();
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  sendMessage();
  ui.input.focus(); // after a click on Send too: the next message can be typed at once
});

ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault(); // Enter sends; Shift+Enter (and an IME's Enter) make a new line
    sendMessage();
  }
});
ui.input.addEventListener("input", fitInput);

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && ui.tokenForm.hidden) {
    event.preventDefault();
    stopSpeaking();
  }
});
ui.stop.addEventListener("click", stopSpeaking);
ui.mute.addEventListener("click", () => {
  player.setMuted(!player.muted);
  ui.mute.setAttribute("aria-pressed", String(player.muted));
  ui.mute.textContent = player.muted ? "Unmute" : "Mute";
  renderStatus();
});

// Safari and iOS start audio only from a gesture: the first one creates the context, later ones
// resume it if it was interrupted.
for (const type of ["pointerdown", "keydown", "touchend"]) {
  document.addEventListener(type, () => player.unlock(), { capture: true });
}

// --- speech input -------------------------------------------------------------------------

ui.mic.addEventListener("click", async () => {
  if (mic.state !== "off") {
    mic.stop();
    return;
  }
  setMicNote("");
  try {
    await mic.start();
  } catch (error) {
    setMicNote(error.message); // the text chat goes on as before
  }
});

function onMicState(state, reason) {
  if (state === "on") {
    speech.level = 0;
    speech.peak = 0;
    // No echo cancellation after all (the browser ignored the constraint): let the server
    // guard against the page's own voice coming back through the microphone.
    if (mic.settings?.echoCancellation === false && connected() && speech.stt) {
      send({ type: "session.update", echo_guard: true });
    }
  } else if (state === "off") {
    speech.hearing = speech.stillYourTurn = speech.committed = false;
    speech.level = 0;
    if (reason) setMicNote(reason instanceof Error ? reason.message : `Microphone off: ${reason}.`);
  }
  renderStatus();
}

/** One 40 ms frame of PCM16 at 16 kHz from the microphone's worklet. */
function onMicFrame(pcm, level) {
  speech.level = level;
  speech.peak = Math.max(speech.peak, level);
  ui.micLevel.style.transform = `scaleX(${level.toFixed(3)})`; // CSSOM: the CSP allows it
  if (!connected() || !speech.stt) {
    speech.framesDropped += 1; // offline: the new connection's audio clock starts afresh
    return;
  }
  send({ type: "input_audio.append", audio: encodeBase64(pcm) });
  speech.framesSent += 1;
  speech.samplesSent += pcm.length / 2;
  speech.frameBytes[pcm.length] = (speech.frameBytes[pcm.length] ?? 0) + 1;
}

/**
 * The user began speaking (over an answer: the server has cancelled it). Silence the page at
 * once, then tell the server how much of the answer was heard, from the player's own position.
 */
function onSpeechStarted() {
  speech.hearing = true;
  speech.stillYourTurn = speech.committed = false;
  setMicNote("");
  return interruptPlayback();
}

/**
 * The server heard the user start a sound over the answer that plays: hold it where it is
 * (its chunks keep queueing). Only that answer's pause counts, and only while it plays.
 */
function onAudioPaused(message) {
  const answer = chat.answers.get(message.response_id);
  if (!answer || answer.silenced || message.response_id !== chat.playingAnswer) return;
  if (answer.status && !audible(player.stats())) return; // played out already
  chat.heldAnswer = answer.responseId;
  player.pause();
}

/** Not an interruption after all (a "yeah", a cough, its own echo): play on from the hold. */
function onAudioResumed(message) {
  if (chat.heldAnswer === null || message.response_id !== chat.heldAnswer) return;
  chat.heldAnswer = null;
  player.resume();
}

/** Stop the answer the user spoke over, and report how much of it was heard (truncate). */
async function interruptPlayback() {
  // An answer not audible yet counts too (heard: nothing), even one still waiting for its
  // response.created.
  const waiting = [...chat.pending.values()].filter((answer) => !answer.silenced).at(-1);
  const inFlight = chat.answers.get(chat.audioAnswer) ?? waiting;
  const report = await stopLocalAudio();
  const answer = report.answer !== null ? chat.answers.get(report.answer) : inFlight;
  if (!answer || answer.heardMs !== null) return;
  const heard = report.answer !== null ? report.played + report.faded : 0;
  answer.heardMs = report.rate ? Math.round((heard * 1000) / report.rate) : 0;
  if (answer.status) sendTruncate(answer); // else once its response.done has come
}

/** `response.truncate` is only for an answer that is done: sent when both facts are in. */
function sendTruncate(answer) {
  if (answer.truncateSent || !answer.responseId || !connected()) return;
  answer.truncateSent = true;
  const message = {
    type: "response.truncate",
    response_id: answer.responseId,
    audio_end_ms: answer.heardMs,
  };
  speech.truncates.push(message);
  send(message);
}

function onTranscript(message) {
  speech.hearing = speech.stillYourTurn = speech.committed = false;
  const text = typeof message.text === "string" ? message.text.trim() : "";
  if (!text) return; // no_speech follows
  addTurn({ role: "user", text, voice: true });
  const answer = addAnswer();
  answer.voice = true;
  chat.pending.set(message.item_id, answer); // its response.created has in_reply_to = item_id
}

function onTruncated(message) {
  speech.truncated.push({
    responseId: message.response_id,
    audioEndMs: message.audio_end_ms,
    text: message.text,
  });
  const answer = chat.answers.get(message.response_id);
  if (!answer) return;
  answer.keptText = typeof message.text === "string" ? message.text : null;
  renderAnswer(answer);
}

function micLabel(stats) {
  if (mic.state === "starting") return "starting…";
  if (mic.state !== "on") return "";
  if (!connected()) return "paused: not connected";
  if (player.paused) return "paused";
  if (speech.committed) return "thinking";
  if (speech.stillYourTurn) return "still your turn…";
  if (speech.hearing) return "hearing you";
  if (audible(stats)) return "speaking";
  const answers = [...chat.pending.values(), ...chat.answers.values()];
  if (answers.some((answer) => !answer.status && !answer.silenced)) return "thinking";
  return "listening";
}

/** Audio is playing, or handed to the player and not played yet (its report may lag). */
function audible(stats) {
  if (stats.queued > 0 || stats.current !== null) return true;
  return Object.values(stats.answers).some((c) => (c.sent ?? 0) > c.played + c.dropped);
}

function setMicNote(text) {
  speech.note = text;
  renderStatus();
}

function renderMic(stats) {
  const unsupported = Microphone.unsupportedReason();
  const on = mic.state !== "off";
  const off = speech.known && !speech.stt;
  ui.mic.disabled = !on && (unsupported !== null || off);
  ui.mic.setAttribute("aria-pressed", String(on));
  ui.mic.title = on
    ? "Stop the microphone"
    : (unsupported ?? (off ? STT_OFF : "Speak instead of typing (the microphone)"));
  const label = micLabel(stats);
  if (label !== speech.label) {
    speech.label = label;
    if (label) speech.history.push(label);
    if (speech.history.length > 100) speech.history.shift();
  }
  ui.voice.hidden = !label && !speech.note;
  ui.voice.dataset.state = label.replace(/[^a-z]+/g, "-").replace(/^-|-$/g, "");
  ui.voice.dataset.mic = mic.state;
  ui.micState.textContent = label;
  ui.micNote.textContent = speech.note;
  if (!on) ui.micLevel.style.transform = "scaleX(0)";
}

// --- the transcript -----------------------------------------------------------------------

function addTurn(turn) {
  chat.turns.push(turn);
  ui.empty.hidden = true;
  const item = document.createElement("article");
  item.className = `turn ${turn.role}`;
  const who = document.createElement("h2");
  who.className = "who";
  who.textContent = turn.role === "user" ? "You" : "voicechat";
  const body = document.createElement("p");
  body.className = "body";
  body.textContent = turn.text;
  item.append(who, body);
  turn.element = { item, body };
  appendToTranscript(item);
  return turn;
}

function addAnswer() {
  const answer = addTurn({
    role: "assistant",
    responseId: null,
    text: "",
    units: {},
    chunks: 0, // audio chunks handed to the player
    heard: null,
    status: "",
    truncated: null,
    metrics: null,
    silenced: false,
    voice: false, // the reply to a spoken turn
    heardMs: null, // how much of its audio was heard before the user spoke over it
    truncateSent: false,
    keptText: null, // what the server's history kept of it (response.truncated)
  });
  const meta = document.createElement("p");
  meta.className = "meta";
  answer.element.item.append(meta);
  answer.element.meta = meta;
  renderAnswer(answer);
  return answer;
}

function renderAnswer(answer) {
  const { item, body, meta } = answer.element;
  const span = answer.heard === null ? null : locateUnit(answer.text, answer.units[answer.heard]);
  if (span) {
    const mark = document.createElement("mark");
    mark.textContent = answer.text.slice(span[0], span[1]);
    body.replaceChildren(answer.text.slice(0, span[0]), mark, answer.text.slice(span[1]));
  } else {
    body.textContent = answer.text || "…";
  }
  item.classList.toggle("waiting", !answer.text);
  item.dataset.status = answer.status || "streaming";
  meta.textContent = answerMeta(answer);
  keepScrolledDown();
}

function answerMeta(answer) {
  const parts = [];
  if (answer.status && answer.status !== "completed") {
    parts.push({ cancelled: "stopped", failed: "failed" }[answer.status] ?? answer.status);
  }
  if (answer.truncated) parts.push(TRUNCATED[answer.truncated] ?? `cut short (${answer.truncated})`);
  if (answer.heardMs !== null) parts.push(`you spoke after ${duration(answer.heardMs)} of it`);
  if (answer.metrics) parts.push(metricsText(answer.metrics));
  return parts.join(" · ");
}

function metricsText({ firstTextMs, firstAudioMs, totalMs }) {
  const first = `first text ${duration(firstTextMs)} · first audio ${duration(firstAudioMs)}`;
  return `${first} · total ${duration(totalMs)}`;
}

function duration(ms) {
  if (ms === null) return "–";
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}

function notice(text) {
  chat.notices.push(text);
  ui.empty.hidden = true;
  const item = document.createElement("p");
  item.className = "notice";
  item.textContent = text;
  appendToTranscript(item);
}

function appendToTranscript(element) {
  const atEnd = isScrolledDown();
  ui.transcript.append(element);
  if (atEnd) element.scrollIntoView({ block: "end" });
}

function isScrolledDown() {
  const { scrollTop, scrollHeight, clientHeight } = ui.transcript;
  return scrollHeight - scrollTop - clientHeight < 48;
}

function keepScrolledDown() {
  if (isScrolledDown()) ui.transcript.scrollTop = ui.transcript.scrollHeight;
}

/** The unit being heard, from the player's position (not from what has arrived). */
function followPlayback() {
  const current = player.stats().current;
  for (const answer of chat.answers.values()) {
    const heard = current && current.answer === answer.responseId ? current.segment : null;
    if (answer.heard !== heard) {
      answer.heard = heard;
      renderAnswer(answer);
    }
  }
  renderStatus();
}

// --- the status line ----------------------------------------------------------------------

function setConnection(state, text) {
  chat.connection = state;
  chat.connectionText = text;
  ui.connection.dataset.state = state;
  ui.connectionText.textContent = text;
  renderStatus();
}

function setHint(text) {
  ui.hint.textContent = text;
}

function setBanner(text) {
  chat.banner = text;
  ui.banner.textContent = text;
  ui.banner.hidden = !text;
}

function renderStatus() {
  const stats = player.stats();
  ui.backends.textContent = chat.backends ? `${chat.backends.llm} + ${chat.backends.tts}` : "";
  const parts = [];
  if (chat.lastMetrics) parts.push(metricsText(chat.lastMetrics));
  parts.push(playbackText(stats));
  const text = parts.join(" · ");
  if (ui.status.textContent !== text) ui.status.textContent = text;
  renderMic(stats);
}

function playbackText(stats) {
  if (stats.state === "none") return "sound starts with your first click or key";
  if (stats.kind === "none") return "sound loading…";
  let state = stats.queued > 0 ? "playing" : "idle";
  if (stats.state !== "running") state = "sound paused by the browser (no output device?): click to resume";
  if (stats.muted) state = "muted";
  const note = stats.note ? ` (${stats.note})` : "";
  return `${state}${note} · ${stats.underruns} underrun${stats.underruns === 1 ? "" : "s"}`;
}

function fitInput() {
  ui.input.style.height = "auto"; // CSSOM, which the page's CSP allows
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 200)}px`;
}

// The longest placeholder that fits the box on one line: in a one-line box a placeholder that
// wraps is cut in half (a phone is 360-390 px wide). The first is the page's own.
const PLACEHOLDERS = [ui.input.placeholder, "Message (Enter sends)", "Message"];
const measure = document.createElement("canvas").getContext("2d");

function fitPlaceholder() {
  const style = getComputedStyle(ui.input);
  const room = ui.input.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  measure.font = `${style.fontStyle} ${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
  const fits = (text) => Math.ceil(measure.measureText(text).width) + 1 <= room; // +1: rounding
  ui.input.placeholder = PLACEHOLDERS.find(fits) ?? PLACEHOLDERS.at(-1);
}

// --- the read-only hook for tests and debugging -------------------------------------------

function snapshot() {
  return structuredClone({
    connection: {
      state: chat.connection,
      text: chat.connectionText,
      sessionId: chat.sessionId,
      backends: chat.backends,
    },
    banner: chat.banner,
    turns: chat.turns.map(({ element, ...turn }) => turn),
    notices: chat.notices,
    metrics: chat.lastMetrics,
    ignoredChunks: chat.ignoredChunks,
    player: player.stats(),
    mic: {
      state: mic.state,
      contextRate: mic.contextRate,
      settings: mic.settings,
      button: {
        disabled: ui.mic.disabled,
        title: ui.mic.title,
        pressed: ui.mic.getAttribute("aria-pressed"),
      },
      capture: mic.inspect(),
      ...speech,
    },
  });
}

window.voicechat = Object.freeze({ state: snapshot });

new ResizeObserver(fitPlaceholder).observe(ui.input); // also its first layout
takeTokenFromFragment();
connect();
setInterval(followPlayback, FOLLOW_MS);
