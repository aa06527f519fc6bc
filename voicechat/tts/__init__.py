"""TTS engines behind one interface (`TTSEngine`): fish (HTTP), tone (synthetic)."""

from voicechat.tts.base import Pcm, TTSEngine, TTSError

__all__ = ["Pcm", "TTSEngine", "TTSError"]
