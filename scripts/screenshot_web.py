"""Save a PNG screenshot of the browser client answering for real (embedded LLM + Piper).

    python scripts/screenshot_web.py [--out docs/img/web.png] [--prompt "Tell me about the moon."]
                                     [--phone] [--phone-out docs/img/web-phone.png]

Why: the docs should show the page as a user sees it, with a real answer. A `voicechat serve`
subprocess with the default back ends (SmolLM2 + Piper) on a free loopback port; one answer over
a plain WebSocket first warms the workers up, so the metrics shown are a warm server's. Then
headless Chromium at 1000x700 (and, with --phone, a second shot at 390x844 with touch): one
question typed and sent with Enter; the shot is taken once the answer has completed while it is
still being spoken, its second unit highlighted (the first if it has only one). Chromium has no
sound server here: its fake output plays in real time, so the highlight moves.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from bench_web import CHROMIUM, voicechat_server  # scripts/ is on sys.path when run as a file

# The answer is complete, the player still has audio, and a unit is highlighted: the second one,
# or the first when the answer has a single unit.
SHOT_READY = r"""
() => {
  const s = window.voicechat.state();
  const answer = s.turns[1];
  if (!answer || answer.status !== "completed" || answer.heard === null) return false;
  const units = Object.keys(answer.units).length;
  return s.player.queued > 0 && answer.heard >= Math.min(1, units - 1)
    && document.querySelector(".turn.assistant mark") !== null;
}
"""


async def shoot(browser: Any, url: str, prompt: str, out: Path, phone: bool) -> None:
    size = {"width": 390, "height": 844} if phone else {"width": 1000, "height": 700}
    context = await browser.new_context(viewport=size, is_mobile=phone, has_touch=phone)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        await page.goto(url)
        await page.wait_for_function(
            "() => window.voicechat.state().connection.state === 'connected'"
        )
        await page.fill("#message", prompt)
        await page.press("#message", "Enter")
        await page.wait_for_function(SHOT_READY, polling=50, timeout=180_000)
        state = await page.evaluate("() => window.voicechat.state()")
        if errors or state["banner"] or state["notices"]:
            raise RuntimeError(
                f"the page is not clean: {errors} {state['banner']!r} {state['notices']}"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        image = await page.screenshot(path=str(out), type="png")
    finally:
        await context.close()
    print(f"saved {out} ({len(image) // 1024} KB, {size['width']}x{size['height']})")


async def warm_up(url: str, prompt: str) -> None:
    """One answer on a connection of its own (its own conversation), read to its end."""
    from voicechat.client.connection import ChatConnection

    ws_url = url.replace("http://", "ws://") + "v1/chat/stream"
    async with ChatConnection(ws_url) as connection:
        await connection.send_user_message(prompt)
        async for event in connection.events():
            if event["type"] == "response.done":
                break


async def main(args: argparse.Namespace) -> None:
    from playwright.async_api import async_playwright

    with voicechat_server() as url:  # the default back ends: --llm local --tts piper
        await asyncio.wait_for(warm_up(url, args.prompt), timeout=120)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                ignore_default_args=["--mute-audio"],
                args=[
                    "--no-sandbox",
                    "--autoplay-policy=no-user-gesture-required",
                    "--hide-scrollbars",
                ],
            )
            try:
                await shoot(browser, url, args.prompt, args.out, phone=False)
                if args.phone:
                    await shoot(browser, url, args.prompt, args.phone_out, phone=True)
            finally:
                await browser.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("docs/img/web.png"))
    parser.add_argument("--prompt", default="Tell me about the moon.")
    parser.add_argument("--phone", action="store_true", help="also a 390x844 phone-sized shot")
    parser.add_argument("--phone-out", type=Path, default=Path("docs/img/web-phone.png"))
    args = parser.parse_args()
    if not Path(CHROMIUM).is_file():
        sys.exit(f"{CHROMIUM} missing: apt-get install chromium (scripts/setup.sh test)")
    try:
        asyncio.run(main(args))
    except KeyboardInterrupt:  # the server and the browser have been stopped on the way out
        sys.exit(130)
