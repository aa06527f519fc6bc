// The page's audio output: one AudioContext, one gapless stream of every answer's samples.
//
// Normally an AudioWorklet (player-worklet.js) plays one queue; where AudioWorklet is missing
// (an insecure context: plain http on a LAN address) AudioBufferSourceNodes are scheduled
// back to back on one cursor instead. Chunks at another rate than the context's are resampled
// here with a windowed-sinc filter: the browser's own conversion of an AudioBuffer's rate
// aliases, and Firefox cannot connect nodes of contexts with different rates.

import { Resampler, SampleQueue } from "./audio-core.js";

const FADE_MS = 10; // a flush fades what is playing out over this long: no click
const DEFAULT_RATE = 22050; // both built-in voices (Piper joe-medium, tone) speak at it
const RATE_KEY = "voicechat.sampleRate";

export class Player {
  constructor({ onStateChange = () => {} } = {}) {
    this.onStateChange = onStateChange;
    this.context = null;
    this.output = null; // WorkletOutput or BufferOutput, once the context is ready
    this.waiting = []; // messages for the output while it loads
    this.master = null; // GainNode: mute keeps time, so the highlight still moves
    this.muted = false;
    this.resampler = null; // for a stream at another rate than the context's
    this.streamRate = null;
    this.segment = null; // the unit of the last chunk (the resampler's tail belongs to it)
    this.note = "";
    this.flushes = []; // what each flush that stopped audio kept and dropped (for the hook)
    this.flushWaiters = []; // one per flush in flight: the output reports them in order
    this.sent = new Map(); // answer -> samples handed to the output (after resampling)
    this.paused = false; // held by response.audio.paused: silence out, nothing lost
  }

  /** Create or resume the AudioContext; call it from a user gesture (Safari and iOS need one). */
  unlock() {
    if (this.context === null) {
      this.open();
    } else if (this.context.state !== "running" && this.context.state !== "closed") {
      this.context.resume().catch(() => {}); // refused without a gesture: the next one retries
    }
  }

  open() {
    const rate = rememberedRate() ?? DEFAULT_RATE;
    try {
      this.context = new AudioContext({ sampleRate: rate, latencyHint: "interactive" });
    } catch {
      this.context = new AudioContext({ latencyHint: "interactive" }); // e.g. Safari below 22050 Hz
    }
    const context = this.context;
    this.master = context.createGain();
    this.master.gain.value = this.muted ? 0 : 1;
    this.master.connect(context.destination);
    context.addEventListener("statechange", () => this.onContextState());
    context.resume().catch(() => {});
    this.load(context);
  }

  async load(context) {
    let output;
    if (context.audioWorklet) {
      try {
        await context.audioWorklet.addModule("player-worklet.js");
        output = new WorkletOutput(context, this.master, (r) => this.flushed(r));
      } catch (error) {
        this.note = `AudioWorklet failed (${error.message}): buffer scheduling`;
      }
    } else {
      this.note = "no AudioWorklet (plain http on a network address?): buffer scheduling";
    }
    this.output = output ?? new BufferOutput(context, this.master, (r) => this.flushed(r));
    for (const [method, args] of this.waiting) this.deliver(method, args);
    this.waiting = [];
    this.onStateChange();
  }

  flushed(report) {
    if (report.answer !== null) this.flushes.push(report); // else the queue was empty
    this.flushWaiters.shift()?.({ ...report, rate: this.context.sampleRate });
  }

  /** iOS interrupts a context (a call, the screen locked): resume it when allowed. */
  onContextState() {
    const state = this.context.state;
    const held = this.paused && this.output?.kind === "buffer"; // suspended on purpose
    if (state === "interrupted" || (state === "suspended" && !held)) {
      this.context.resume().catch(() => {});
    }
    this.onStateChange();
  }

  send(method, ...args) {
    if (this.output) this.deliver(method, args);
    else this.waiting.push([method, args]);
  }

  deliver(method, args) {
    if (method === "push") {
      const [samples, answer] = args;
      this.sent.set(answer, (this.sent.get(answer) ?? 0) + samples.length);
      if (this.sent.size > 32) this.sent.delete(this.sent.keys().next().value);
    }
    this.output[method](...args);
  }

  /** Queue one chunk of `answer` (float samples at `rate`), labelled with its speech unit. */
  push(answer, segment, samples, rate) {
    if (this.context === null) this.open(); // audio before any gesture: autoplay may allow it
    const target = this.context.sampleRate;
    if (rate !== this.streamRate) {
      this.endResampler(answer);
      rememberRate(rate);
      this.streamRate = rate;
      this.resampler = rate === target ? null : new Resampler(rate, target);
    }
    this.segment = segment;
    this.send("push", this.resampler ? this.resampler.process(samples) : samples, answer, segment);
  }

  /** The answer's audio is complete: what is queued plays out, then silence is no underrun. */
  end(answer) {
    this.endResampler(answer);
    this.send("end");
  }

  endResampler(answer) {
    if (this.resampler) this.send("push", this.resampler.finish(), answer, this.segment);
    this.resampler = null;
    this.streamRate = null;
  }

  /**
   * Stop at once: a short fade, every queued sample of the old answer dropped. Resolves with the
   * output's report: {answer (the one at the head of the queue, or null), played (its samples
   * played before the flush), faded (played during the fade), dropped, rate (the context's)}.
   */
  flush() {
    this.resampler = null;
    this.streamRate = null;
    this.paused = false; // the output's flush ends its hold too
    if (!this.output) {
      this.waiting = []; // nothing has played yet
      return Promise.resolve({ answer: null, played: 0, faded: 0, dropped: 0, rate: null });
    }
    const report = new Promise((resolve) => this.flushWaiters.push(resolve));
    this.output.flush(FADE_MS);
    return report;
  }

  /**
   * Hold playback exactly where it is (the server heard the user start a sound over the
   * answer): silence out, every queued sample kept, chunks pushed meanwhile queue behind them.
   */
  pause() {
    if (this.paused) return;
    this.paused = true;
    this.send("pause");
  }

  /** Play on from where `pause()` held it, not one sample lost or repeated. */
  resume() {
    if (!this.paused) return;
    this.paused = false;
    this.send("resume");
  }

  setMuted(muted) {
    this.muted = muted;
    const gain = this.master?.gain;
    gain?.setTargetAtTime(muted ? 0 : 1, this.context.currentTime, 0.005); // 5 ms: no click
  }

  stats() {
    const counters = this.output?.stats() ?? new SampleQueue().stats();
    for (const [answer, sent] of this.sent) {
      counters.answers[answer] = { ...counters.answers[answer], sent };
    }
    return {
      kind: this.output?.kind ?? "none",
      state: this.context?.state ?? "none",
      contextRate: this.context?.sampleRate ?? null,
      streamRate: this.streamRate,
      muted: this.muted,
      holding: this.paused,
      note: this.note,
      ...counters,
      flushes: this.flushes.slice(-10),
    };
  }
}

/** The AudioWorklet path: samples go to the worklet's queue; its reports come back. */
class WorkletOutput {
  kind = "worklet";

  constructor(context, destination, onFlushed) {
    this.node = new AudioWorkletNode(context, "voicechat-player", {
      numberOfInputs: 0,
      outputChannelCount: [1],
    });
    this.node.connect(destination);
    this.latest = new SampleQueue().stats();
    this.node.port.onmessage = ({ data }) => {
      if (data.type === "stats") this.latest = data;
      else if (data.type === "flushed") onFlushed(data);
    };
  }

  push(samples, answer, segment) {
    this.node.port.postMessage({ type: "push", samples, answer, segment }, [samples.buffer]);
  }

  end() {
    this.node.port.postMessage({ type: "end" });
  }

  flush(fadeMs) {
    this.node.port.postMessage({ type: "flush", fadeMs });
  }

  pause() {
    this.node.port.postMessage({ type: "pause" });
  }

  resume() {
    this.node.port.postMessage({ type: "resume" });
  }

  stats() {
    const { type, ...counters } = this.latest;
    return counters;
  }
}

/**
 * Where AudioWorklet is missing: one AudioBufferSourceNode per chunk, each started where the
 * previous one ends (one cursor, `max(currentTime, cursor)`), never chained on `onended`.
 */
class BufferOutput {
  kind = "buffer";

  constructor(context, destination, onFlushed) {
    this.context = context;
    this.destination = destination;
    this.onFlushed = onFlushed;
    this.rate = context.sampleRate;
    this.cursor = 0; // context time at which the next chunk starts
    this.scheduled = []; // {source, start, length, answer, segment}, oldest first
    this.expecting = false;
    this.paused = false; // the context is suspended to hold playback
    this.counters = new SampleQueue(); // only its counters: received, played, dropped, answers
    this.newGeneration();
  }

  newGeneration() {
    this.gain = this.context.createGain(); // a flush fades out this one and starts another
    this.gain.connect(this.destination);
  }

  push(samples, answer, segment) {
    this.settle();
    const now = this.context.currentTime;
    if (this.expecting && this.cursor < now) this.counters.underruns += 1; // it ran dry
    this.counters.countsOf(answer).received += samples.length;
    this.counters.received += samples.length;
    this.expecting = true;
    if (!samples.length) return;
    const buffer = this.context.createBuffer(1, samples.length, this.rate);
    buffer.copyToChannel(samples, 0);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.gain);
    const start = Math.max(now, this.cursor);
    source.start(start);
    this.cursor = start + samples.length / this.rate;
    this.scheduled.push({ source, start, length: samples.length, answer, segment });
  }

  end() {
    this.settle();
    if (this.expecting && this.cursor < this.context.currentTime) this.counters.underruns += 1;
    this.expecting = false;
  }

  /** Scheduled sources cannot be held one by one: the whole context is, which is all they are. */
  pause() {
    this.paused = true;
    this.context.suspend().catch(() => {});
  }

  resume() {
    this.paused = false;
    this.context.resume().catch(() => {});
  }

  flush(fadeMs) {
    const held = this.paused; // what is held is silent already: it goes at once, unfaded
    if (held) this.resume();
    this.settle();
    const now = this.context.currentTime;
    const fadeEnd = now + (held ? 0 : fadeMs / 1000);
    if (held) {
      this.gain.gain.setValueAtTime(0, now);
    } else {
      this.gain.gain.setValueAtTime(1, now);
      this.gain.gain.linearRampToValueAtTime(0, fadeEnd);
    }
    const head = this.scheduled[0];
    const report = { answer: head?.answer ?? null, played: 0, faded: 0, dropped: 0 };
    if (head) report.played = this.counters.countsOf(head.answer).played + this.heard(head, now);
    for (const chunk of this.scheduled) {
      const kept = this.heard(chunk, fadeEnd);
      report.faded += kept - this.heard(chunk, now);
      this.settleChunk(chunk, kept);
      const dropped = chunk.length - kept;
      this.counters.countsOf(chunk.answer).dropped += dropped;
      this.counters.dropped += dropped;
      report.dropped += dropped;
      chunk.source.stop(fadeEnd);
    }
    this.scheduled = [];
    this.cursor = fadeEnd;
    this.expecting = false;
    this.newGeneration();
    this.onFlushed(report);
  }

  /** Samples of `chunk` played by context time `time`. */
  heard(chunk, time) {
    return Math.min(chunk.length, Math.max(0, Math.round((time - chunk.start) * this.rate)));
  }

  settleChunk(chunk, played) {
    this.counters.countsOf(chunk.answer).played += played;
    this.counters.played += played;
  }

  /** Move chunks that have finished playing into the counters. */
  settle() {
    const now = this.context.currentTime;
    const finished = (chunk) => chunk && this.heard(chunk, now) === chunk.length;
    while (finished(this.scheduled[0])) {
      const chunk = this.scheduled.shift();
      this.settleChunk(chunk, chunk.length);
      this.counters.current = { answer: chunk.answer, segment: chunk.segment };
    }
  }

  stats() {
    this.settle();
    const now = this.context.currentTime;
    const stats = this.counters.stats();
    stats.queued = 0;
    for (const chunk of this.scheduled) {
      const heard = this.heard(chunk, now);
      stats.played += heard;
      stats.queued += chunk.length - heard;
      stats.answers[chunk.answer] = { ...stats.answers[chunk.answer] };
      stats.answers[chunk.answer].played += heard;
    }
    stats.position = stats.played + stats.dropped;
    stats.paused = this.paused;
    const playing = this.scheduled.find((chunk) => chunk.start <= now); // settled: not finished
    if (playing) stats.current = { answer: playing.answer, segment: playing.segment };
    else if (!this.expecting) stats.current = null; // between answers; in a dry spell keep it
    return stats;
  }
}

function rememberedRate() {
  try {
    const rate = Number(localStorage.getItem(RATE_KEY));
    return rate >= 8000 && rate <= 192000 ? rate : null;
  } catch {
    return null; // storage disabled
  }
}

/** The stream's rate, so the next visit creates its context at it (no resampling). */
function rememberRate(rate) {
  try {
    localStorage.setItem(RATE_KEY, String(rate));
  } catch {
    // storage disabled: resample every visit
  }
}
