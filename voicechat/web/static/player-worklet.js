// The AudioWorklet processor: plays one queue of float samples at the context's rate.
// One node for the page's lifetime; it never stops on an underrun (it plays silence and waits).
//
// In:  {type: "push", samples, answer, segment} | {type: "end"} | {type: "flush", fadeMs}
//      | {type: "pause"} | {type: "resume"}: hold the read position (silence out, every sample
//      kept, pushes still queued), then play on from the next sample
// Out: {type: "stats", ...SampleQueue.stats()} about every REPORT_S, and at once after a flush
//      ({type: "flushed", ...} first) or when an underrun starts.

import { SampleQueue } from "./audio-core.js";

const REPORT_S = 0.02; // how fresh the page's counters and highlight are
const MAX_QUEUED_S = 600; // a bound on memory: the server's own cap on an answer's audio
const MAX_FADE_MS = 20;
const HOLD_FADE_MS = 5; // the volume ramp into a pause and out of it: no click

class PlayerProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = new SampleQueue({
      maxSamples: MAX_QUEUED_S * sampleRate,
      fadeSamples: Math.round((sampleRate * HOLD_FADE_MS) / 1000),
    });
    this.sinceReport = 0;
    this.port.onmessage = (event) => this.receive(event.data);
  }

  receive(message) {
    if (message.type === "push") {
      this.queue.push(message.samples, message.answer, message.segment);
    } else if (message.type === "end") {
      this.queue.end();
    } else if (message.type === "pause") {
      this.queue.pause();
      this.report();
    } else if (message.type === "resume") {
      this.queue.resume();
      this.report();
    } else if (message.type === "flush") {
      const fadeMs = Math.min(MAX_FADE_MS, message.fadeMs);
      const report = this.queue.flush(Math.round((sampleRate * fadeMs) / 1000));
      this.port.postMessage({ type: "flushed", ...report });
      this.report();
    }
  }

  process(inputs, outputs) {
    const channel = outputs[0][0];
    const underruns = this.queue.underruns;
    this.queue.pull(channel);
    this.sinceReport += channel.length;
    if (this.queue.underruns !== underruns || this.sinceReport >= REPORT_S * sampleRate) {
      this.report();
    }
    return true; // keep running through silence
  }

  report() {
    this.sinceReport = 0;
    this.port.postMessage({ type: "stats", ...this.queue.stats() });
  }
}

registerProcessor("voicechat-player", PlayerProcessor);
