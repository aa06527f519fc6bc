// The AudioWorklet processor of the microphone: its input (the MediaStream, downmixed to mono by
// the node) goes through MicFramer: resampled to 16 kHz, cut into 40 ms frames of PCM16.
//
// In:  {type: "stop"}: process() returns false and the node goes quiet for good.
// Out: {type: "frame", pcm: ArrayBuffer (PCM16 LE, 640 samples), level: 0..1} every 40 ms.

import { MicFramer } from "./audio-core.js";

class MicProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.framer = new MicFramer(sampleRate);
    this.running = true;
    this.port.onmessage = ({ data }) => {
      if (data.type === "stop") this.running = false;
    };
  }

  process(inputs) {
    const channel = inputs[0]?.[0]; // absent until the stream delivers
    if (this.running && channel) {
      for (const { pcm, level } of this.framer.push(channel)) {
        this.port.postMessage({ type: "frame", pcm: pcm.buffer, level }, [pcm.buffer]);
      }
    }
    return this.running;
  }
}

registerProcessor("voicechat-mic", MicProcessor);
