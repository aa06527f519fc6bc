// The page's microphone: getUserMedia with the browser's echo cancellation, noise suppression
// and gain control, captured by an AudioWorklet (mic-worklet.js) in an AudioContext of its own
// at the device's rate (Firefox cannot connect a stream to a context at another rate), which
// hands out 40 ms frames of PCM16 at 16 kHz (the resampling is MicFramer's, in audio-core.js).

export const CONSTRAINTS = {
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
};

export class MicError extends Error {}

export class Microphone {
  constructor({ onFrame = () => {}, onStateChange = () => {} } = {}) {
    this.onFrame = onFrame; // (pcm: Uint8Array, level: number in [0, 1])
    this.onStateChange = onStateChange;
    this.state = "off"; // off | starting | on
    this.capture = null; // {stream, context, source, node} of the current start
    this.last = null; // the latest capture, kept after it stops (for the page's hook)
    this.settings = null; // the track's settings once on (echoCancellation, sampleRate, ...)
    this.contextRate = null;
  }

  /** Why this page cannot use a microphone here, or null. */
  static unsupportedReason() {
    if (!globalThis.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
      return "the microphone needs https or a localhost address";
    }
    if (typeof AudioWorkletNode === "undefined") return "this browser has no AudioWorklet";
    return null;
  }

  /** Ask for the microphone and start capturing. Throws MicError with words for the user. */
  async start() {
    if (this.state !== "off") return;
    const capture = { stream: null, context: null, source: null, node: null };
    this.capture = capture;
    this.last = capture;
    this.setState("starting");
    const current = () => this.capture === capture; // stop() during the start wins
    try {
      capture.stream = await navigator.mediaDevices.getUserMedia(CONSTRAINTS);
      if (!current()) return release(capture);
      const context = new AudioContext({ latencyHint: "interactive" });
      capture.context = context;
      await context.audioWorklet.addModule("mic-worklet.js");
      if (!current()) return release(capture);
      capture.source = context.createMediaStreamSource(capture.stream);
      capture.node = new AudioWorkletNode(context, "voicechat-mic", {
        numberOfInputs: 1,
        numberOfOutputs: 0,
        channelCount: 1, // the node downmixes a stereo device
        channelCountMode: "explicit",
      });
      capture.node.port.onmessage = ({ data }) => {
        if (data.type === "frame" && current()) this.onFrame(new Uint8Array(data.pcm), data.level);
      };
      capture.source.connect(capture.node);
      const [track] = capture.stream.getAudioTracks();
      track.addEventListener("ended", () => {
        if (current()) this.stop(new MicError("The microphone went away (unplugged?)."));
      });
      await context.resume();
      if (!current()) return release(capture);
      this.settings = track.getSettings?.() ?? {};
      this.contextRate = context.sampleRate;
      this.setState("on");
    } catch (error) {
      release(capture);
      if (current()) {
        this.capture = null;
        this.setState("off");
      }
      throw new MicError(describe(error));
    }
  }

  /** Stop capturing: the tracks stop (the browser's recording light goes off), the node closes. */
  stop(reason = null) {
    if (this.capture) release(this.capture);
    this.capture = null;
    if (this.state !== "off") this.setState("off", reason);
  }

  /** What is left of the latest capture: its tracks' and its context's states. */
  inspect() {
    const { stream, context } = this.last ?? {};
    return {
      tracks: stream?.getTracks().map((track) => track.readyState) ?? [],
      context: context?.state ?? null,
    };
  }

  setState(state, reason = null) {
    this.state = state;
    this.onStateChange(state, reason);
  }
}

function release({ stream, context, source, node }) {
  for (const track of stream?.getTracks() ?? []) track.stop();
  if (node) {
    node.port.postMessage({ type: "stop" });
    node.port.onmessage = null;
    node.port.close();
  }
  source?.disconnect();
  node?.disconnect();
  if (context && context.state !== "closed") context.close().catch(() => {});
}

function describe(error) {
  switch (error?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return (
        "The microphone is blocked for this page: allow it in the browser's site settings, " +
        "then click Mic again."
      );
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone found: plug one in, then click Mic again.";
    case "NotReadableError":
    case "AbortError":
      return "The microphone cannot be opened (another program may be using it).";
    default:
      return `The microphone failed (${error?.name ?? "error"}: ${error?.message ?? error}).`;
  }
}
