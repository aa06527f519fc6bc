// Test signals for the audio tests: a sine, and the amplitude of one frequency in a signal.

export function sine(rate, frequency, count, amplitude = 0.5) {
  const omega = (2 * Math.PI * frequency) / rate;
  return Float32Array.from({ length: count }, (_, n) => amplitude * Math.sin(omega * n));
}

/** Amplitude of the `frequency` component of `samples` (a single-bin DFT, Hann-windowed). */
export function amplitudeAt(samples, rate, frequency) {
  let re = 0;
  let im = 0;
  let windowSum = 0;
  for (let n = 0; n < samples.length; n++) {
    const w = 0.5 - 0.5 * Math.cos((2 * Math.PI * n) / (samples.length - 1));
    const angle = (2 * Math.PI * frequency * n) / rate;
    re += w * samples[n] * Math.cos(angle);
    im -= w * samples[n] * Math.sin(angle);
    windowSum += w;
  }
  return (2 * Math.hypot(re, im)) / windowSum;
}
