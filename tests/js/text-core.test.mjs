// Where a spoken unit sits in the written answer (voicechat/web/static/text-core.js).

import assert from "node:assert/strict";
import { test } from "node:test";

import { locateUnit } from "../../voicechat/web/static/text-core.js";

test("the unit as written", () => {
  const text = "The moon is bright. It lights the valley.";
  assert.deepEqual(locateUnit(text, "It lights the valley."), [20, 41]);
});

test("markdown and spacing the speech filter removed", () => {
  const text = "It is **very** bright,\n  and _cold_.";
  const [start, end] = locateUnit(text, "It is very bright, and cold");
  assert.equal(text.slice(start, end), "It is **very** bright,\n  and _cold");
});

test("Korean and accented words", () => {
  const text = "안녕하세요. 오늘은 날씨가 좋네요! Ça va très bien.";
  const [start, end] = locateUnit(text, "오늘은 날씨가 좋네요!");
  assert.equal(text.slice(start, end), "오늘은 날씨가 좋네요!");
  const [s2, e2] = locateUnit(text, "Ça va  très bien");
  assert.equal(text.slice(s2, e2), "Ça va très bien");
});

test("characters that mean something in a regular expression", () => {
  const text = "Is 2+2 (really) 4? Yes [sure] $5.";
  const [start, end] = locateUnit(text, "2 + 2 really 4");
  assert.equal(text.slice(start, end), "2+2 (really) 4");
});

test("nothing to find", () => {
  assert.equal(locateUnit("Some text.", ""), null);
  assert.equal(locateUnit("Some text.", "   "), null);
  assert.equal(locateUnit("Some text.", "..."), null);
  assert.equal(locateUnit("Some text.", "other words"), null);
  assert.equal(locateUnit("Some text.", undefined), null);
});
