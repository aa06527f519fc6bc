// The browser client's pure audio logic (voicechat/web/static/audio-core.js), in Node.
// Node 20 has no Uint8Array.fromBase64, so decodeBase64 runs its fallback decoder here.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  Base64Error,
  decodeBase64,
  decodeBase64Fallback,
  parseWav,
  Resampler,
  SampleQueue,
  WavError,
} from "../../voicechat/web/static/audio-core.js";
import { amplitudeAt, sine } from "./signal.mjs";

// --- helpers ------------------------------------------------------------------------------

/** A deterministic pseudo-random generator (mulberry32), so failures reproduce. */
function random(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomBytes(next, length) {
  return Uint8Array.from({ length }, () => Math.floor(next() * 256));
}

function chunk(id, body, declared = body.length) {
  const header = Buffer.alloc(8);
  header.write(id, 0, "latin1");
  header.writeUInt32LE(declared >>> 0, 4);
  return Buffer.concat([header, body, Buffer.alloc(body.length % 2)]); // pad odd sizes
}

function fmtBody({ format = 1, channels = 1, rate = 22050, bits = 16 } = {}) {
  const body = Buffer.alloc(16);
  body.writeUInt16LE(format, 0);
  body.writeUInt16LE(channels, 2);
  body.writeUInt32LE(rate, 4);
  body.writeUInt32LE((rate * channels * bits) / 8, 8);
  body.writeUInt16LE((channels * bits) / 8, 12);
  body.writeUInt16LE(bits, 14);
  return body;
}

function pcm(values) {
  const body = Buffer.alloc(2 * values.length);
  values.forEach((v, i) => body.writeInt16LE(v, 2 * i));
  return body;
}

function wav(chunks, riffSize = null) {
  const body = Buffer.concat([Buffer.from("WAVE"), ...chunks]);
  return new Uint8Array(chunk("RIFF", body, riffSize ?? body.length));
}

const SAMPLES = [0, 32767, -32768, 1234, -1];
const FLOATS = SAMPLES.map((v) => v / 32768);

function db(ratio) {
  return 20 * Math.log10(ratio);
}

function resampleInChunks(from, to, input, sizes) {
  const resampler = new Resampler(from, to);
  const parts = [];
  let at = 0;
  for (let i = 0; at < input.length; i++) {
    const size = sizes[i % sizes.length];
    parts.push(resampler.process(input.subarray(at, at + size)));
    at += size;
  }
  parts.push(resampler.finish());
  const out = new Float32Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

// --- Base64 -------------------------------------------------------------------------------

describe("Base64", () => {
  const next = random(7);
  const lengths = [0, 1, 2, 3, 4, 5, 6, 7, 8, 57, 58, 59, 60, 1000, 44144];
  for (let i = 0; i < 40; i++) lengths.push(Math.floor(next() * 3000));

  test("round-trips against Buffer for every length modulo 3 and 4", () => {
    assert.equal(new Set(lengths.map((n) => n % 3)).size, 3); // every kind of padding
    for (const length of lengths) {
      const bytes = randomBytes(next, length);
      const text = Buffer.from(bytes).toString("base64");
      assert.deepEqual(decodeBase64Fallback(text), bytes, `length ${length}`);
      assert.deepEqual(decodeBase64(text), bytes, `length ${length}`);
      const unpadded = text.replace(/=+$/, "");
      assert.deepEqual(decodeBase64Fallback(unpadded), bytes, `unpadded, length ${length}`);
    }
  });

  test("every alphabet character decodes as Buffer does", () => {
    const text = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    assert.deepEqual(decodeBase64Fallback(text), new Uint8Array(Buffer.from(text, "base64")));
  });

  const invalid = ["A", "AAAAA", "QQ=", "A===", "AB=C", "=AAA", "QUJD$", "QU JD", "QUJD\n"];
  invalid.push("ÀÀÀÀ", "QUJ\u0100", "-_-_"); // not ASCII; the URL-safe alphabet
  for (const bad of invalid) {
    test(`refuses ${JSON.stringify(bad)}`, () => {
      assert.throws(() => decodeBase64Fallback(bad), Base64Error);
      assert.throws(() => decodeBase64(bad), Base64Error);
    });
  }

  test("refuses what is not a string", () => {
    assert.throws(() => decodeBase64(null), Base64Error);
    assert.throws(() => decodeBase64(42), Base64Error);
  });
});

// --- WAV ----------------------------------------------------------------------------------

describe("WAV", () => {
  test("a plain 44-byte-header file", () => {
    const bytes = wav([chunk("fmt ", fmtBody()), chunk("data", pcm(SAMPLES))]);
    assert.equal(bytes.length, 44 + 2 * SAMPLES.length);
    const { sampleRate, samples } = parseWav(bytes);
    assert.equal(sampleRate, 22050);
    assert.deepEqual(Array.from(samples), FLOATS.map(Math.fround));
  });

  test("LIST and other chunks before data, odd-sized ones padded", () => {
    const bytes = wav([
      chunk("LIST", Buffer.from("INFOISFT\x05\x00\x00\x00Lavf\x00")), // 17 bytes: one pad byte
      chunk("fmt ", fmtBody({ rate: 16000 })),
      chunk("junk", Buffer.from("abc")),
      chunk("fact", Buffer.alloc(4)),
      chunk("data", pcm(SAMPLES)),
      chunk("LIST", Buffer.from("after the data")),
    ]);
    const { sampleRate, samples } = parseWav(bytes);
    assert.equal(sampleRate, 16000);
    assert.deepEqual(Array.from(samples), FLOATS.map(Math.fround));
  });

  test("a larger fmt chunk (WAVE_FORMAT_EXTENSIBLE, PCM) is read", () => {
    const body = Buffer.concat([fmtBody({ format: 0xfffe }), Buffer.alloc(24)]);
    body.writeUInt16LE(22, 16); // cbSize
    body.writeUInt16LE(1, 24); // the sub-format GUID starts with the PCM code
    const { samples } = parseWav(wav([chunk("fmt ", body), chunk("data", pcm(SAMPLES))]));
    assert.equal(samples.length, SAMPLES.length);
  });

  test("a truncated file: the data size is clamped to the bytes present", () => {
    const full = wav([chunk("fmt ", fmtBody()), chunk("data", pcm(SAMPLES))]);
    const cut = full.subarray(0, full.length - 3); // 1.5 samples short
    assert.deepEqual(Array.from(parseWav(cut).samples), FLOATS.slice(0, 3).map(Math.fround));
  });

  test("oversized and streaming (0xFFFFFFFF) sizes are clamped, RIFF size ignored", () => {
    for (const declared of [0xffffffff, 1000, 0x7fffffff]) {
      const data = chunk("data", pcm(SAMPLES), declared);
      const bytes = wav([chunk("fmt ", fmtBody()), data], 0xffffffff);
      assert.equal(parseWav(bytes).samples.length, SAMPLES.length, `declared ${declared}`);
    }
    const zero = wav([chunk("fmt ", fmtBody()), chunk("data", pcm(SAMPLES), 0)], 0);
    assert.equal(parseWav(zero).samples.length, 0); // a zero size is taken at its word
  });

  test("a chunk whose size runs past the end before any data: no data chunk", () => {
    const runaway = chunk("LIST", Buffer.alloc(4), 0xfffffff0);
    const bytes = wav([runaway, chunk("fmt ", fmtBody()), chunk("data", pcm(SAMPLES))]);
    assert.throws(() => parseWav(bytes), /no data chunk/);
  });

  const garbage = {
    "empty": new Uint8Array(0),
    "random bytes": randomBytes(random(3), 500),
    "RIFF but not WAVE": new Uint8Array(Buffer.from("RIFF\x04\0\0\0AVI LIST\0\0\0\0")),
    "RIFX (big-endian)": (() => {
      const b = wav([chunk("fmt ", fmtBody()), chunk("data", pcm(SAMPLES))]);
      b.set(Buffer.from("RIFX"));
      return b;
    })(),
    "no fmt before data": wav([chunk("data", pcm(SAMPLES)), chunk("fmt ", fmtBody())]),
    "no data chunk": wav([chunk("fmt ", fmtBody())]),
    "header only": wav([]),
    "fmt too short": wav([chunk("fmt ", Buffer.alloc(10)), chunk("data", pcm(SAMPLES))]),
    "stereo": wav([chunk("fmt ", fmtBody({ channels: 2 })), chunk("data", pcm(SAMPLES))]),
    "8-bit": wav([chunk("fmt ", fmtBody({ bits: 8 })), chunk("data", pcm(SAMPLES))]),
    "float": wav([chunk("fmt ", fmtBody({ format: 3, bits: 32 })), chunk("data", pcm(SAMPLES))]),
    "rate 0": wav([chunk("fmt ", fmtBody({ rate: 0 })), chunk("data", pcm(SAMPLES))]),
    "not bytes": "RIFF....WAVE",
  };
  for (const [name, bytes] of Object.entries(garbage)) {
    test(`refuses garbage: ${name}`, () => {
      assert.throws(() => parseWav(bytes), WavError);
    });
  }
});

// --- the sample queue ---------------------------------------------------------------------

describe("SampleQueue", () => {
  const ramp = (n, from = 0) => Float32Array.from({ length: n }, (_, i) => (from + i) / 10000);

  test("pulls exactly what was pushed, in order, then zeros", () => {
    const queue = new SampleQueue();
    queue.push(ramp(100), "a", 0);
    queue.push(ramp(100, 100), "a", 1);
    const out = new Float32Array(128);
    assert.equal(queue.pull(out), 128);
    assert.deepEqual(out, ramp(128));
    queue.end();
    assert.equal(queue.pull(out), 72);
    assert.deepEqual(out.subarray(0, 72), ramp(72, 128));
    assert.ok(out.subarray(72).every((v) => v === 0));
    const { received, played, queued, underruns } = queue;
    assert.deepEqual({ received, played, queued, underruns }, {
      received: 200, played: 200, queued: 0, underruns: 0,
    });
    assert.deepEqual(queue.answers.get("a"), { received: 200, played: 200, dropped: 0 });
  });

  test("a dry spell while the answer is coming is one underrun, however long", () => {
    const queue = new SampleQueue();
    const out = new Float32Array(128);
    queue.pull(out); // nothing expected yet: silence before the first chunk is no underrun
    assert.equal(queue.underruns, 0);
    queue.push(ramp(100), "a", 0);
    queue.pull(out); // runs dry in this quantum
    queue.pull(out);
    queue.pull(out);
    assert.equal(queue.underruns, 1);
    queue.push(ramp(300), "a", 1);
    queue.pull(out);
    queue.pull(out);
    assert.equal(queue.underruns, 1);
    queue.pull(out); // dry again: a second spell
    queue.pull(out);
    assert.equal(queue.underruns, 2);
    assert.equal(queue.played, 400);
  });

  test("running dry at the end of an answer is no underrun, with the end before or after", () => {
    const queue = new SampleQueue();
    const out = new Float32Array(128);
    queue.push(ramp(300), "a", 0);
    queue.end(); // the end marker comes while audio is still queued
    for (let i = 0; i < 5; i++) queue.pull(out);
    assert.equal(queue.underruns, 0);
    assert.equal(queue.current, null); // played out: nothing to highlight
    queue.push(ramp(100), "b", 0); // a next answer
    queue.pull(out);
    assert.equal(queue.underruns, 1); // b has not ended: this is a real dry spell
    queue.end();
    queue.pull(out);
    assert.equal(queue.underruns, 1);
  });

  test("the unit played is the one at the playback position, not the last one pushed", () => {
    const queue = new SampleQueue();
    queue.push(ramp(200), "a", 0);
    queue.push(ramp(200), "a", 1);
    queue.push(ramp(200), "a", 2);
    assert.equal(queue.current, null);
    const out = new Float32Array(128);
    queue.pull(out);
    assert.deepEqual(queue.current, { answer: "a", segment: 0 });
    queue.pull(out); // samples 128..255: ends inside unit 1
    assert.deepEqual(queue.current, { answer: "a", segment: 1 });
    assert.equal(queue.position, 256);
  });

  test("flush keeps a faded head and drops the rest; the next answer plays whole", () => {
    const queue = new SampleQueue();
    const ones = new Float32Array(1000).fill(0.5);
    queue.push(ones, "a", 0);
    const out = new Float32Array(128);
    queue.pull(out);
    const report = queue.flush(32);
    assert.deepEqual(report, { answer: "a", played: 128, faded: 32, dropped: 1000 - 128 - 32 });
    assert.equal(queue.current, null);
    queue.push(new Float32Array(100).fill(0.25), "b", 0);
    assert.equal(queue.pull(out), 128);
    assert.equal(out[0], 0.5); // the fade starts where playback was...
    assert.ok(out[31] > 0 && out[31] < 0.5 / 16); // ...and ends near zero
    assert.ok(out.subarray(0, 32).every((v, i) => i === 0 || v < out[i - 1]));
    assert.equal(out[32], 0.25); // then the next answer, nothing of the old one in between
    assert.deepEqual(queue.answers.get("a"), { received: 1000, played: 160, dropped: 840 });
    queue.end();
    queue.pull(out);
    assert.deepEqual(queue.answers.get("b"), { received: 100, played: 100, dropped: 0 });
    assert.equal(queue.underruns, 0); // a flush ends the dry-spell accounting of the old answer
    assert.equal(queue.position, 1100);
  });

  test("flushing a short or empty queue", () => {
    const queue = new SampleQueue();
    assert.deepEqual(queue.flush(32), { answer: null, played: 0, faded: 0, dropped: 0 });
    queue.push(new Float32Array(10).fill(1), "a", 0);
    assert.deepEqual(queue.flush(32), { answer: "a", played: 0, faded: 10, dropped: 0 });
    const out = new Float32Array(128);
    assert.equal(queue.pull(out), 10);
    assert.equal(queue.pull(out), 0);
    assert.equal(queue.underruns, 0);
  });

  test("pause holds the position; resume plays on from the next sample, none lost", () => {
    const fade = 16;
    const queue = new SampleQueue({ fadeSamples: fade });
    const first = ramp(1000, 1000); // never zero, even faded: silence is exactly the hold
    const second = ramp(300, 5000);
    queue.push(first, "a", 0);
    const out = new Float32Array(128);
    const played = [];
    const pull = () => {
      queue.pull(out);
      played.push(...out);
    };
    pull();
    pull(); // 256 samples heard
    queue.pause();
    for (let i = 0; i < 5; i++) pull(); // held: the fade, then zeros
    assert.equal(queue.played, 256 + fade); // the fade's samples are the last heard
    assert.equal(queue.position, 256 + fade);
    assert.ok(played.slice(256 + fade).every((v) => v === 0));
    assert.equal(queue.held, 5 * 128 - fade);
    queue.push(second, "a", 1); // arrives while held: queued behind
    queue.end();
    pull();
    assert.equal(queue.played, 256 + fade); // still held
    assert.deepEqual(queue.current, { answer: "a", segment: 0 });
    assert.equal(queue.underruns, 0);
    queue.resume();
    for (let i = 0; i < 12; i++) pull();
    const sound = played.filter((v) => v !== 0);
    const expected = [...first, ...second];
    assert.equal(sound.length, expected.length); // nothing lost, nothing repeated
    sound.forEach((v, i) => {
      // Exact, except that the volume ramps into the hold and out of it.
      if (i < 256 || i >= 256 + 2 * fade) assert.equal(v, expected[i], `sample ${i}`);
      else assert.ok(v > 0 && v <= expected[i], `sample ${i} in the ramp`);
    });
    assert.ok(sound[256] > sound[256 + fade - 1]); // down into the hold...
    assert.ok(sound[256 + fade] < sound[256 + 2 * fade - 1]); // ...and up out of it
    assert.deepEqual(queue.answers.get("a"), { received: 1300, played: 1300, dropped: 0 });
    assert.equal(queue.underruns, 0);
  });

  test("a flush while paused drops what was held, unfaded; the next answer plays whole", () => {
    const queue = new SampleQueue({ fadeSamples: 16 });
    queue.push(new Float32Array(1000).fill(0.5), "a", 0);
    const out = new Float32Array(128);
    queue.pull(out);
    queue.pause();
    queue.pull(out);
    queue.pull(out);
    const report = queue.flush(32);
    assert.deepEqual(report, { answer: "a", played: 144, faded: 0, dropped: 856 });
    assert.equal(queue.paused, false);
    queue.push(new Float32Array(100).fill(0.25), "b", 0);
    queue.end();
    assert.equal(queue.pull(out), 100);
    assert.ok(out.subarray(0, 100).every((v) => v === 0.25)); // full volume from the start
    assert.deepEqual(queue.answers.get("a"), { received: 1000, played: 144, dropped: 856 });
  });

  test("past its bound the queue drops samples and counts them", () => {
    const queue = new SampleQueue({ maxSamples: 150 });
    queue.push(new Float32Array(100), "a", 0);
    queue.push(new Float32Array(100), "a", 1);
    assert.equal(queue.queued, 150);
    assert.deepEqual(queue.answers.get("a"), { received: 200, played: 0, dropped: 50 });
  });
});

// --- the resampler ------------------------------------------------------------------------

describe("Resampler", () => {
  const pairs = [
    [22050, 48000],
    [22050, 44100],
    [16000, 22050],
    [48000, 22050],
    [44100, 16000],
    [22050, 48001], // a ratio with more phases than the table holds
  ];

  for (const [from, to] of pairs) {
    test(`${from} -> ${to}: ceil(n * to / from) samples, the same however it is chunked`, () => {
      const next = random(from + to);
      for (const n of [0, 1, 7, 1000, 22050 + 17]) {
        const input = Float32Array.from({ length: n }, () => next() - 0.5);
        const whole = resampleInChunks(from, to, input, [n || 1]);
        assert.equal(whole.length, Math.ceil((n * to) / from), `n = ${n}`);
        const chunked = resampleInChunks(from, to, input, [1, 128, 333, 4000]);
        assert.equal(chunked.length, whole.length);
        for (let i = 0; i < whole.length; i++) assert.ok(Math.abs(chunked[i] - whole[i]) < 1e-6);
      }
    });
  }

  test("a tone below Nyquist is kept: amplitude, phase and timing", () => {
    const cases = [[22050, 48000, 1000], [22050, 48000, 8000], [48000, 22050, 3000]];
    for (const [from, to, frequency] of cases) {
      const out = resampleInChunks(from, to, sine(from, frequency, from), [4410]);
      const ideal = sine(to, frequency, out.length);
      const margin = Math.ceil(to / 20); // away from the edges, where the input starts and stops
      let error = 0;
      let power = 0;
      for (let i = margin; i < out.length - margin; i++) {
        error += (out[i] - ideal[i]) ** 2;
        power += ideal[i] ** 2;
      }
      const level = db(Math.sqrt(error / power));
      assert.ok(level < -50, `${frequency} Hz ${from} -> ${to}: error at ${level} dB`);
    }
  });

  test("a tone above the target's Nyquist is attenuated by more than 30 dB (no aliasing)", () => {
    const cases = [[44100, 16000, 12000], [48000, 22050, 15000], [48000, 22050, 11600]];
    for (const [from, to, frequency] of cases) {
      const out = resampleInChunks(from, to, sine(from, frequency, from), [1000]);
      const alias = Math.abs(to - frequency); // where it would fold to
      const ratio = amplitudeAt(out, to, alias) / 0.5;
      assert.ok(db(ratio) < -30, `${frequency} Hz, ${from} -> ${to}: ${db(ratio)} dB`);
    }
  });

  test("upsampling leaves no image of the tone above the source's Nyquist", () => {
    const out = resampleInChunks(22050, 48000, sine(22050, 9000, 22050), [2205]);
    assert.ok(db(amplitudeAt(out, 48000, 9000) / 0.5) > -0.5);
    const image = 22050 - 9000;
    const level = db(amplitudeAt(out, 48000, image) / 0.5);
    assert.ok(level < -30, `the image at ${image} Hz is at ${level} dB`);
  });
});
