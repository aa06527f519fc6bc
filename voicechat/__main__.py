"""`python -m voicechat` is the same as the `voicechat` command."""

from voicechat.cli import main

main()
