// The browser client's audio logic, free of DOM and Web Audio so it runs in Node's tests and
// inside the AudioWorklet: Base64, WAV chunk walking, int16 -> float32, a windowed-sinc
// resampler, and the sample queue the worklet plays from.

// --- Base64 -------------------------------------------------------------------------------

export class Base64Error extends Error {}

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const SEXTETS = new Uint8Array(128).fill(255); // ASCII code -> 6-bit value; 255: not Base64
for (let i = 0; i < ALPHABET.length; i++) SEXTETS[ALPHABET.charCodeAt(i)] = i;

/** Bytes of a Base64 string: the browser's own decoder where it has one (about 4x faster than the table below, 0.04 ms for a 1 s chunk; scripts/bench_web.py). */
export function decodeBase64(text) {
  if (typeof text !== "string") throw new Base64Error("audio is not a Base64 string");
  if (typeof Uint8Array.fromBase64 === "function") {
    try {
      return Uint8Array.fromBase64(text);
    } catch (error) {
      throw new Base64Error(`audio is not valid Base64 (${error.message})`);
    }
  }
  return decodeBase64Fallback(text);
}

/**
 * A table-driven decoder for browsers without Uint8Array.fromBase64. Padding is optional, as in
 * fromBase64's default mode; unlike it, whitespace is refused (the server never sends any).
 */
export function decodeBase64Fallback(text) {
  let end = text.length;
  const padded = (at) => text.charCodeAt(at) === 61; // "="
  if (end % 4 === 0 && padded(end - 1)) end -= padded(end - 2) ? 2 : 1;
  const tail = end % 4;
  if (tail === 1) throw new Base64Error("audio is not valid Base64 (bad length)");
  const out = new Uint8Array((end >> 2) * 3 + (tail ? tail - 1 : 0));
  const whole = end - tail;
  let o = 0;
  for (let i = 0; i < whole; i += 4) {
    const n = quantum(text, i, 4);
    out[o++] = n >> 16;
    out[o++] = (n >> 8) & 255;
    out[o++] = n & 255;
  }
  if (tail === 2) {
    out[o] = quantum(text, whole, 2) >> 16;
  } else if (tail === 3) {
    const n = quantum(text, whole, 3);
    out[o] = n >> 16;
    out[o + 1] = (n >> 8) & 255;
  }
  return out;
}

/** `count` (2-4) characters from `start` as a 24-bit group, left-aligned. */
function quantum(text, start, count) {
  let n = 0;
  for (let k = 0; k < 4; k++) {
    const code = k < count ? text.charCodeAt(start + k) : 65; // "A" = 0 pads a short group
    const value = code < 128 ? SEXTETS[code] : 255;
    if (value === 255) {
      throw new Base64Error(`audio is not valid Base64 (character ${start + k})`);
    }
    n = (n << 6) | value;
  }
  return n;
}

// --- WAV ----------------------------------------------------------------------------------

export class WavError extends Error {}

const MIN_RATE = 1000;
const MAX_RATE = 384000;

/**
 * {sampleRate, samples: Float32Array} of a 16-bit mono PCM WAV file. Walks the RIFF chunks
 * (LIST and others may come before `data`), honours odd-size padding, and clamps sizes to the
 * bytes present: streaming writers put 0 or 0xFFFFFFFF in them. Throws WavError otherwise.
 */
export function parseWav(bytes) {
  if (!(bytes instanceof Uint8Array)) throw new WavError("not a WAV file (no bytes)");
  if (bytes.length < 12 || fourcc(bytes, 0) !== "RIFF" || fourcc(bytes, 8) !== "WAVE") {
    throw new WavError("not a WAV file (no RIFF/WAVE header)");
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let format = null;
  let offset = 12;
  while (offset + 8 <= bytes.length) {
    const id = fourcc(bytes, offset);
    const declared = view.getUint32(offset + 4, true);
    const body = offset + 8;
    const size = Math.min(declared, bytes.length - body);
    if (id === "fmt ") {
      format = readFormat(view, body, size);
    } else if (id === "data") {
      if (format === null) throw new WavError("unusable WAV file (data before fmt)");
      return { sampleRate: format.sampleRate, samples: int16ToFloat32(view, body, size >> 1) };
    }
    offset = body + declared + (declared & 1); // chunks are padded to an even size
  }
  throw new WavError("unusable WAV file (no data chunk)");
}

function fourcc(bytes, at) {
  return String.fromCharCode(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]);
}

function readFormat(view, body, size) {
  if (size < 16) throw new WavError("unusable WAV file (fmt chunk too short)");
  let code = view.getUint16(body, true);
  if (code === 0xfffe && size >= 26) code = view.getUint16(body + 24, true); // EXTENSIBLE
  const channels = view.getUint16(body + 2, true);
  const sampleRate = view.getUint32(body + 4, true);
  const bits = view.getUint16(body + 14, true);
  if (code !== 1 || channels !== 1 || bits !== 16) {
    throw new WavError(
      `unsupported WAV audio (format ${code}, ${channels} channels, ${bits} bits; ` +
        "expected 16-bit mono PCM)",
    );
  }
  if (sampleRate < MIN_RATE || sampleRate > MAX_RATE) {
    throw new WavError(`unsupported WAV sample rate ${sampleRate} Hz`);
  }
  return { sampleRate };
}

/** `count` little-endian int16 samples from `view` at byte `offset`, scaled to [-1, 1). */
function int16ToFloat32(view, offset, count) {
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = view.getInt16(offset + 2 * i, true) / 32768;
  return out;
}

// --- Resampling ---------------------------------------------------------------------------

const MAX_PHASES = 4096; // beyond it, phases are rounded: < 1/8192 sample of timing error

/**
 * A streaming windowed-sinc (Kaiser) resampler with a polyphase table. Output sample n sits at
 * input time n * from / to; `finish()` returns the filter's tail, after which exactly
 * ceil(inputs * to / from) samples have come out. Chunk boundaries are seamless.
 */
export class Resampler {
  constructor(fromRate, toRate, { zeroCrossings = 32, rolloff = 0.92, beta = 8 } = {}) {
    const g = gcd(fromRate, toRate);
    this.step = fromRate / g; // input advance per output, in units of 1/up input samples
    this.up = toRate / g;
    const cutoff = 0.5 * rolloff * Math.min(1, toRate / fromRate); // cycles per input sample
    this.half = Math.ceil(zeroCrossings / (2 * cutoff));
    this.phases = Math.min(this.up, MAX_PHASES);
    this.table = kernelTable(this.phases, this.half, cutoff, beta);
    this.reset();
  }

  reset() {
    this.buffer = new Float32Array(this.half - 1); // zeros before the first input sample
    this.first = -(this.half - 1); // input index of buffer[0]
    this.inputs = 0;
    this.position = 0; // input time of the next output, in units of 1/up input samples
  }

  process(input) {
    this.append(input);
    this.inputs += input.length;
    // An output at base index b reads inputs up to b + half, or b + half + 1 when its phase
    // rounds up to the next index: emit those whose base is <= inputs - half - 2.
    const limit = (this.inputs - this.half - 1) * this.up;
    return this.emit(Math.max(0, Math.ceil((limit - this.position) / this.step)));
  }

  finish() {
    this.append(new Float32Array(this.half + 1)); // zeros after the last input sample
    const end = this.inputs * this.up; // every output before the last input's time
    const out = this.emit(Math.max(0, Math.ceil((end - this.position) / this.step)));
    this.reset();
    return out;
  }

  append(input) {
    const joined = new Float32Array(this.buffer.length + input.length);
    joined.set(this.buffer);
    joined.set(input, this.buffer.length);
    this.buffer = joined;
  }

  emit(count) {
    const { up, step, half, phases, table, buffer } = this;
    const taps = 2 * half;
    const out = new Float32Array(count);
    for (let n = 0; n < count; n++) {
      let base = Math.floor(this.position / up);
      let phase = Math.round(((this.position - base * up) * phases) / up);
      if (phase === phases) [base, phase] = [base + 1, 0];
      const start = base - half + 1 - this.first;
      const row = phase * taps;
      let sum = 0;
      for (let k = 0; k < taps; k++) sum += buffer[start + k] * table[row + k];
      out[n] = sum;
      this.position += step;
    }
    const keep = Math.floor(this.position / up) - half + 1 - this.first; // inputs no longer needed
    if (keep > 0) {
      this.buffer = this.buffer.slice(keep);
      this.first += keep;
    }
    return out;
  }
}

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** phases x (2 * half) taps: row p holds h(k - p / phases) for k = -half + 1 .. half. */
function kernelTable(phases, half, cutoff, beta) {
  const taps = 2 * half;
  const table = new Float32Array(phases * taps);
  const norm = besselI0(beta);
  for (let p = 0; p < phases; p++) {
    let sum = 0;
    for (let k = 0; k < taps; k++) {
      const x = k - half + 1 - p / phases;
      const r = x / half;
      const window = Math.abs(r) >= 1 ? 0 : besselI0(beta * Math.sqrt(1 - r * r)) / norm;
      const value = 2 * cutoff * sinc(2 * cutoff * x) * window;
      table[p * taps + k] = value;
      sum += value;
    }
    for (let k = 0; k < taps; k++) table[p * taps + k] /= sum; // unity gain at DC, every phase
  }
  return table;
}

function sinc(x) {
  return x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
}

function besselI0(x) {
  let sum = 1;
  let term = 1;
  for (let k = 1; term > 1e-12 * sum; k++) {
    term *= (x / (2 * k)) ** 2;
    sum += term;
  }
  return sum;
}

// --- The sample queue ---------------------------------------------------------------------

/**
 * One queue of float samples, each block labelled with its answer and speech unit; the
 * worklet pulls from it every render quantum. Running dry while the answer is still coming
 * (after a push, before `end()`) is an underrun, counted once per dry spell.
 *
 * `pause()` holds the read position (the server heard the user start a sound over the
 * answer): zeros come out, nothing queued is dropped, pushes keep queueing, and `resume()`
 * plays on from the very next sample. The volume ramps over `fadeSamples` into the hold and
 * out of it, on the samples themselves: none is skipped or repeated, and there is no click.
 */
export class SampleQueue {
  constructor({ maxSamples = Infinity, fadeSamples = 1 } = {}) {
    this.maxSamples = maxSamples; // a bound on memory; beyond it samples are dropped
    this.fadeSamples = Math.max(1, fadeSamples); // the hold's volume ramp
    this.gain = this.fadeSamples; // of fadeSamples: full volume; 0: held (silent)
    this.paused = false;
    this.held = 0; // samples of silence put out while paused
    this.blocks = []; // {samples, offset, answer, segment}
    this.queued = 0;
    this.received = 0;
    this.played = 0;
    this.dropped = 0;
    this.underruns = 0;
    this.position = 0; // samples taken from the queue so far, played or dropped
    this.current = null; // {answer, segment} of the last sample played
    this.expecting = false; // an answer's audio is still coming
    this.dry = false; // inside a dry spell that has been counted
    this.answers = new Map(); // answer -> {received, played, dropped}
  }

  push(samples, answer, segment) {
    const room = Math.max(0, this.maxSamples - this.queued);
    const kept = samples.length > room ? samples.subarray(0, room) : samples;
    const counts = this.countsOf(answer);
    counts.received += samples.length;
    this.received += samples.length;
    this.drop(counts, samples.length - kept.length);
    if (kept.length) {
      this.blocks.push({ samples: kept, offset: 0, answer, segment });
      this.queued += kept.length;
    }
    this.expecting = true;
  }

  /** The answer's audio is complete: the queue may now run dry without an underrun. */
  end() {
    this.expecting = false;
    this.dry = false;
  }

  /** Hold playback where it is: zeros out, every sample kept (and pushes still queued). */
  pause() {
    this.paused = true;
  }

  /** Play on from the exact sample where the hold began. */
  resume() {
    this.paused = false;
    this.dry = false; // the time held was no underrun
  }

  /** Fill `out` from the queue, zeros past its end; returns how many samples were audio. */
  pull(out) {
    if (this.paused) return this.pullHeld(out);
    const filled = this.take(out, out.length);
    for (let i = 0; i < filled && this.gain < this.fadeSamples; i++) {
      out[i] *= ++this.gain / this.fadeSamples; // fading back in after a hold
    }
    this.noteDryness(filled < out.length);
    return filled;
  }

  /** While paused: what is left of the fade into the hold, then zeros. */
  pullHeld(out) {
    if (!this.queued) this.gain = 0; // nothing cut off: the next audio fades in from silence
    const filled = this.take(out, Math.min(out.length, this.gain));
    for (let i = 0; i < filled; i++) out[i] *= (this.gain - i) / this.fadeSamples;
    this.gain -= filled;
    this.held += out.length - filled;
    return filled;
  }

  /** Up to `limit` queued samples into `out` (zeros after them); how many were audio. */
  take(out, limit) {
    let filled = 0;
    while (filled < limit && this.blocks.length) {
      const block = this.blocks[0];
      const n = Math.min(limit - filled, block.samples.length - block.offset);
      out.set(block.samples.subarray(block.offset, block.offset + n), filled);
      filled += n;
      block.offset += n;
      this.countsOf(block.answer).played += n;
      this.current = { answer: block.answer, segment: block.segment };
      if (block.offset === block.samples.length) this.blocks.shift();
    }
    out.fill(0, filled);
    this.queued -= filled;
    this.played += filled;
    this.position += filled;
    return filled;
  }

  noteDryness(ranDry) {
    if (ranDry && this.expecting && !this.dry) this.underruns += 1;
    this.dry = ranDry && this.expecting;
    if (ranDry && !this.expecting) this.current = null; // the answer played out
  }

  /**
   * Stop now: keep the next `fadeSamples`, ramped down to zero (no click), drop everything
   * else. Returns what was kept and dropped, and the answer's played count at that moment.
   * Ends a hold too: what was held is silent already, so it is all dropped, none faded.
   */
  flush(fadeSamples) {
    const head = this.blocks[0];
    const report = { answer: head ? head.answer : null, faded: 0, dropped: 0, played: 0 };
    if (head) report.played = this.countsOf(head.answer).played;
    const level = this.gain / this.fadeSamples; // below 1 while held or fading back in
    this.paused = false;
    this.gain = this.fadeSamples;
    const fade = new Float32Array(Math.min(Math.round(fadeSamples * level), this.queued));
    const fadeBlock = head && fade.length ? { ...head } : null;
    for (const block of this.blocks) {
      let from = block.offset;
      if (block.answer === report.answer && report.faded < fade.length) {
        const n = Math.min(fade.length - report.faded, block.samples.length - from);
        fade.set(block.samples.subarray(from, from + n), report.faded);
        report.faded += n;
        from += n;
      }
      const rest = block.samples.length - from;
      this.drop(this.countsOf(block.answer), rest);
      report.dropped += rest;
    }
    for (let i = 0; i < report.faded; i++) fade[i] *= level * (1 - i / report.faded);
    this.position += report.dropped;
    this.blocks = [];
    this.queued = 0;
    if (fadeBlock) {
      this.blocks.push({ ...fadeBlock, samples: fade.subarray(0, report.faded), offset: 0 });
      this.queued = report.faded;
    }
    this.current = null;
    this.end();
    return report;
  }

  drop(counts, n) {
    counts.dropped += n;
    this.dropped += n;
  }

  countsOf(answer) {
    let counts = this.answers.get(answer);
    if (!counts) {
      counts = { received: 0, played: 0, dropped: 0 };
      this.answers.set(answer, counts);
      if (this.answers.size > 32) this.answers.delete(this.answers.keys().next().value);
    }
    return counts;
  }

  /** A plain snapshot (for postMessage and the page's debug hook). */
  stats() {
    return {
      received: this.received,
      played: this.played,
      dropped: this.dropped,
      underruns: this.underruns,
      position: this.position,
      queued: this.queued,
      current: this.current,
      paused: this.paused,
      held: this.held,
      answers: Object.fromEntries(this.answers),
    };
  }
}

// --- Microphone capture -------------------------------------------------------------------

export const MIC_RATE = 16000; // what the server takes: PCM16 little-endian, mono, 16 kHz
export const MIC_FRAME_MS = 40; // one input_audio.append per frame (the protocol: 20-100 ms)

/** Float samples in [-1, 1] as PCM16 little-endian bytes (rounded, clipped; NaN is silence). */
export function floatToPcm16(samples) {
  const bytes = new Uint8Array(2 * samples.length);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < samples.length; i++) {
    const x = samples[i];
    const value = x >= 1 ? 32767 : x <= -1 ? -32768 : Math.round(x * 32768) || 0;
    view.setInt16(2 * i, Math.min(32767, value), true);
  }
  return bytes;
}

/** Base64 of bytes: the browser's own encoder where it has one, a table elsewhere. */
export function encodeBase64(bytes) {
  if (typeof bytes.toBase64 === "function") return bytes.toBase64();
  return encodeBase64Fallback(bytes);
}

export function encodeBase64Fallback(bytes) {
  let out = "";
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += ALPHABET[n >> 18] + ALPHABET[(n >> 12) & 63];
    out += ALPHABET[(n >> 6) & 63] + ALPHABET[n & 63];
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i] << 16;
    out += `${ALPHABET[n >> 18]}${ALPHABET[(n >> 12) & 63]}==`;
  } else if (rest === 2) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8);
    out += `${ALPHABET[n >> 18]}${ALPHABET[(n >> 12) & 63]}${ALPHABET[(n >> 6) & 63]}=`;
  }
  return out;
}

const METER_FLOOR_DB = -60;

/** A meter reading in [0, 1]: the RMS level in dBFS from -60 (0) to 0 (1). */
export function meterLevel(samples) {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
  const rms = samples.length ? Math.sqrt(sum / samples.length) : 0;
  const db = rms > 0 ? 20 * Math.log10(rms) : -Infinity;
  return Math.min(1, Math.max(0, 1 - db / METER_FLOOR_DB));
}

/**
 * Microphone samples at the capture context's rate in, frames of exactly `frameMs` of PCM16 at
 * `outputRate` out. Downsampling goes through the windowed-sinc Resampler, whose low-pass
 * (cut-off 0.92 x the new Nyquist) keeps what lies above 8 kHz from folding into speech.
 * A partial frame waits for the next push; `reset()` drops it.
 */
export class MicFramer {
  constructor(inputRate, { outputRate = MIC_RATE, frameMs = MIC_FRAME_MS } = {}) {
    this.inputRate = inputRate;
    this.outputRate = outputRate;
    this.frameSamples = Math.round((outputRate * frameMs) / 1000);
    this.resampler = inputRate === outputRate ? null : new Resampler(inputRate, outputRate);
    this.frame = new Float32Array(this.frameSamples);
    this.filled = 0;
  }

  /** Feed `samples`; returns the frames completed by them: [{pcm: Uint8Array, level}]. */
  push(samples) {
    const resampled = this.resampler ? this.resampler.process(samples) : samples;
    const frames = [];
    let offset = 0;
    while (offset < resampled.length) {
      const n = Math.min(this.frameSamples - this.filled, resampled.length - offset);
      this.frame.set(resampled.subarray(offset, offset + n), this.filled);
      this.filled += n;
      offset += n;
      if (this.filled === this.frameSamples) {
        frames.push({ pcm: floatToPcm16(this.frame), level: meterLevel(this.frame) });
        this.filled = 0;
      }
    }
    return frames;
  }

  reset() {
    this.resampler?.reset();
    this.filled = 0;
  }
}
