"""Save an SVG screenshot of `voicechat talk` answering for real (embedded LLM + Piper).

    python scripts/screenshot_talk.py [--out docs/img/talk.svg] [--prompt "Tell me about the moon."]

The app runs headless (Textual's run_test) against the embedded server, plays through the null
output (paced like a sound card), and the screenshot is taken while the second unit is heard, so
the highlight shows.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from voicechat.cli import running_server
from voicechat.settings import BackendOptions, ServerConfig
from voicechat.tui.app import AnswerView, VoiceChatApp


async def main(out: Path, prompt: str) -> None:
    async with running_server(BackendOptions(), ServerConfig(port=0)) as server:
        await screenshot(VoiceChatApp(server.url, device="null"), out, prompt)
    print(f"saved {out}")


async def screenshot(app: VoiceChatApp, out: Path, prompt: str) -> None:
    async with app.run_test(size=(100, 26)) as pilot:
        async with asyncio.timeout(120):
            while app.connection is None:
                await pilot.pause(0.1)
            await pilot.press(*prompt, "enter")
            while not any(view.status and view.heard == 1 for view in app.query(AnswerView)):
                await pilot.pause(0.05)
        app.save_screenshot(filename=out.name, path=str(out.parent))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/img/talk.svg"))
    parser.add_argument("--prompt", default="Tell me about the moon.")
    args = parser.parse_args()
    asyncio.run(main(args.out, args.prompt))
