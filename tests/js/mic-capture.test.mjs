// The microphone's pure DSP (voicechat/web/static/audio-core.js: MicFramer, floatToPcm16,
// encodeBase64, meterLevel), in Node: what mic-worklet.js runs on every render quantum.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  decodeBase64Fallback,
  encodeBase64,
  encodeBase64Fallback,
  floatToPcm16,
  meterLevel,
  MIC_FRAME_MS,
  MIC_RATE,
  MicFramer,
} from "../../voicechat/web/static/audio-core.js";
import { amplitudeAt, sine } from "./signal.mjs";

const FRAME_SAMPLES = (MIC_RATE * MIC_FRAME_MS) / 1000; // 640
const QUANTUM = 128; // what an AudioWorklet's process() gets each call

const db = (ratio) => 20 * Math.log10(ratio);

/** Every frame MicFramer gives for `input` pushed in pieces of `sizes` (cycled). */
function capture(rate, input, sizes = [QUANTUM]) {
  const framer = new MicFramer(rate);
  const frames = [];
  for (let at = 0, i = 0; at < input.length; i++) {
    const size = sizes[i % sizes.length];
    frames.push(...framer.push(input.subarray(at, at + size)));
    at += size;
  }
  return frames;
}

/** The frames' PCM16 as floats, one array. */
function samplesOf(frames) {
  const out = new Float32Array(frames.length * FRAME_SAMPLES);
  frames.forEach(({ pcm }, f) => {
    const view = new DataView(pcm.buffer, pcm.byteOffset, pcm.byteLength);
    for (let i = 0; i < FRAME_SAMPLES; i++) {
      out[f * FRAME_SAMPLES + i] = view.getInt16(2 * i, true) / 32768;
    }
  });
  return out;
}

// --- PCM16 and Base64 ---------------------------------------------------------------------

describe("PCM16", () => {
  test("rounds, clips and writes little-endian", () => {
    const input = [0, 0.5, -0.5, 1, -1, 1.5, -1.5, Number.NaN, 1 / 32768, -1 / 32768, 0.99999, -0];
    const bytes = floatToPcm16(Float32Array.from(input));
    assert.equal(bytes.length, 2 * input.length);
    const view = new DataView(bytes.buffer);
    const values = input.map((_, i) => view.getInt16(2 * i, true));
    assert.deepEqual(values, [0, 16384, -16384, 32767, -32768, 32767, -32768, 0, 1, -1, 32767, 0]);
    assert.deepEqual([...bytes.subarray(2, 4)], [0x00, 0x40]); // 16384, low byte first
  });

  test("the page's decoder reads back what it wrote, to the last bit", () => {
    const values = Float32Array.from({ length: 1000 }, (_, i) => ((i * 7919) % 65536) / 32768 - 1);
    const bytes = floatToPcm16(values);
    const view = new DataView(bytes.buffer);
    for (let i = 0; i < values.length; i++) {
      assert.equal(view.getInt16(2 * i, true) / 32768, values[i]);
    }
  });
});

describe("Base64 encoding", () => {
  test("matches Buffer for every length modulo 3, and round-trips", () => {
    for (let length = 0; length < 40; length++) {
      const bytes = Uint8Array.from({ length }, (_, i) => (i * 97 + length * 13) & 255);
      const expected = Buffer.from(bytes).toString("base64");
      assert.equal(encodeBase64Fallback(bytes), expected, `length ${length}`);
      assert.equal(encodeBase64(bytes), expected);
      assert.deepEqual(decodeBase64Fallback(expected), bytes);
    }
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    assert.equal(encodeBase64Fallback(all), Buffer.from(all).toString("base64"));
  });
});

// --- frames -------------------------------------------------------------------------------

describe("MicFramer", () => {
  for (const rate of [48000, 44100, 96000, 22050, 16000, 8000]) {
    test(`${rate} Hz: frames of exactly 40 ms (1280 bytes), however the input comes`, () => {
      const input = sine(rate, 440, 3 * rate);
      const frames = capture(rate, input);
      for (const { pcm } of frames) assert.equal(pcm.length, 2 * FRAME_SAMPLES);
      // Every output sample whose input has arrived is out, but for the filter's look-ahead
      // (a few ms): 3 s is 75 frames, the last one still incomplete.
      const available = 3 * MIC_RATE;
      assert.ok(frames.length === available / FRAME_SAMPLES - (rate === MIC_RATE ? 0 : 1));
      const other = capture(rate, input, [1, 127, 1000, 4096, 333]);
      assert.deepEqual(samplesOf(other), samplesOf(frames));
    });
  }

  test("at 16 kHz the samples pass through untouched", () => {
    const step = (i) => Math.round(((i % 200) - 100) * 300) / 32768; // exact in int16
    const input = Float32Array.from({ length: 16000 }, (_, i) => step(i));
    const frames = capture(16000, input);
    assert.equal(frames.length, 25);
    assert.deepEqual(samplesOf(frames), input);
  });

  test("a partial frame waits for more input; reset() drops it", () => {
    const framer = new MicFramer(16000);
    assert.deepEqual(framer.push(new Float32Array(639)), []);
    const [frame] = framer.push(new Float32Array(1).fill(0.5));
    assert.equal(new DataView(frame.pcm.buffer).getInt16(2 * 639, true), 16384);
    assert.deepEqual(framer.push(new Float32Array(600)), []);
    framer.reset();
    assert.deepEqual(framer.push(new Float32Array(600)), []); // 600, not 1200: nothing complete
    assert.equal(framer.push(new Float32Array(40)).length, 1);
  });

  test("speech-band tones come through: amplitude, phase and timing", () => {
    for (const rate of [48000, 44100]) {
      for (const frequency of [200, 1000, 3400, 6000]) {
        const out = samplesOf(capture(rate, sine(rate, frequency, 2 * rate)));
        // Output n sits at input time n * rate / 16000: no delay to undo.
        const ideal = sine(MIC_RATE, frequency, out.length);
        let error = 0;
        let power = 0;
        for (let i = 800; i < out.length; i++) { // past the filter's start-up
          error += (out[i] - ideal[i]) ** 2;
          power += ideal[i] ** 2;
        }
        const level = db(Math.sqrt(error / power));
        assert.ok(level < -45, `${frequency} Hz from ${rate} Hz: error at ${level.toFixed(1)} dB`);
      }
    }
  });

  test("tones above 8 kHz are filtered out, not folded into speech (no aliasing)", () => {
    for (const rate of [48000, 44100]) {
      for (const frequency of [8400, 10000, 12000, 15000, 20000]) {
        const out = samplesOf(capture(rate, sine(rate, frequency, 2 * rate)));
        const alias = Math.abs(MIC_RATE * Math.round(frequency / MIC_RATE) - frequency);
        const level = db(amplitudeAt(out.subarray(800), MIC_RATE, alias) / 0.5);
        const what = `${frequency} Hz from ${rate} Hz folds to ${alias} Hz`;
        assert.ok(level < -70, `${what} at ${level.toFixed(1)} dB`);
      }
    }
  });
});

describe("the level meter", () => {
  test("maps RMS from -60 dBFS (0) to 0 dBFS (1)", () => {
    assert.equal(meterLevel(new Float32Array(640)), 0);
    assert.equal(meterLevel(new Float32Array(0)), 0);
    assert.equal(meterLevel(new Float32Array(640).fill(1)), 1);
    assert.ok(Math.abs(meterLevel(new Float32Array(640).fill(0.01)) - 1 / 3) < 1e-6); // -40 dB
    assert.equal(meterLevel(new Float32Array(640).fill(1e-4)), 0); // -80 dB: below the floor
  });

  test("each frame carries its own level", () => {
    const quiet = sine(16000, 440, 640, 0.01);
    const loud = sine(16000, 440, 640, 0.5);
    const framer = new MicFramer(16000);
    const [a, b] = framer.push(Float32Array.from([...quiet, ...loud]));
    assert.ok(a.level < 0.4 && b.level > 0.8, `${a.level} ${b.level}`);
  });
});
