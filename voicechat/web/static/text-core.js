// Pure text helpers of the browser client (no DOM): where a spoken unit sits in an answer.

const WORD = /[\p{L}\p{M}\p{N}_]+/gu;
const BETWEEN_WORDS = "[^\\p{L}\\p{M}\\p{N}]+";

/**
 * [start, end) of `unit` (the text as it went to TTS) in the answer's written `text`, or null.
 * The speech-text filter may have dropped markdown or changed spacing, so when the exact text
 * is not there, its words are matched with anything but letters and digits between them.
 */
export function locateUnit(text, unit) {
  if (!unit || !unit.trim()) return null;
  const start = text.indexOf(unit);
  if (start >= 0) return [start, start + unit.length];
  const words = unit.match(WORD);
  if (!words) return null;
  const pattern = new RegExp(words.map(escapeRegExp).join(BETWEEN_WORDS), "u");
  const match = pattern.exec(text);
  return match ? [match.index, match.index + match[0].length] : null;
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
