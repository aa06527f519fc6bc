"""Headless, real PortAudio audio for tests, on a machine without a sound card.

Two outputs, both reached through PortAudio's ALSA host API in one process:

- device "default": ALSA's `null` plugin. It takes every frame at once, so a test can count
  samples exactly and never waits for a clock.
- device "pulse": ALSA's `pulse` plugin (libasound2-plugins) into a private PulseAudio daemon
  whose default sink is a `module-null-sink`. It consumes audio at the rate of a real card,
  so underruns and latency behave as they would on hardware.

A daemon started with `microphone=True` also has a microphone: a `module-pipe-source` (16 kHz
mono s16le) as its default source, so device "pulse" records whatever `feed_microphone` writes
into the source's FIFO, paced in real time like speech into a real microphone.

Everything lives in a directory the caller gives (a pytest temp dir): the ALSA configuration,
the daemon's HOME, runtime directory, socket, cookie and log. Nothing is written to $HOME. The
daemon runs in the foreground as a direct child that dies with the process that started it, even
if that process is killed (tests/process_guard.py).
"""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import socket
import subprocess
import threading
import time
import types
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .process_guard import spawn, stop

NULL_DEVICE = "default"  # ALSA pcm "default", redefined as the null plugin
PACED_DEVICE = "pulse"  # ALSA pcm "pulse" -> our PulseAudio daemon -> its null sink
PULSE_SINK = "voicechat_test"
PULSE_MONITOR = f"{PULSE_SINK}.monitor"
SINK_RATE = 48000
MIC_SOURCE = "mic"  # the pipe source of a daemon started with microphone=True
MIC_RATE = 16000  # what it records: s16le, mono, 16 kHz (the rate the server takes)
MIC_BLOCK_S = 0.02  # the feeder writes 20 ms at a time, in real time
START_TIMEOUT_S = 10.0  # bound on the daemon's start-up; it takes ~50 ms

ALSA_CONF = "/usr/share/alsa/alsa.conf"
# Where distributions put ALSA's plugins; libasound_module_pcm_pulse.so is libasound2-plugins.
ALSA_PLUGIN_DIRS = ("/usr/lib/*/alsa-lib", "/usr/lib/alsa-lib", "/usr/lib64/alsa-lib")


def portaudio_missing() -> str | None:
    """Why PortAudio through ALSA cannot work here (a missing package), or None."""
    if not Path(ALSA_CONF).is_file():
        return f"{ALSA_CONF} missing: install libasound2 (scripts/setup.sh test)"
    try:
        import sounddevice  # noqa: F401  (loads libportaudio)
    except OSError as error:
        return f"PortAudio not loadable ({error}): install libportaudio2 (scripts/setup.sh test)"
    return None


def pulse_missing() -> str | None:
    """Why the paced PulseAudio output cannot work here (a missing package), or None."""
    if shutil.which("pulseaudio") is None:
        return "pulseaudio not installed (scripts/setup.sh test installs it)"
    plugins = [p for d in ALSA_PLUGIN_DIRS for p in glob.glob(f"{d}/libasound_module_pcm_pulse.so")]
    if not plugins:
        return "ALSA pulse plugin not installed: install libasound2-plugins (scripts/setup.sh test)"
    return None


def write_alsa_config(directory: Path) -> Path:
    """Write an ALSA configuration whose "default" pcm is the null plugin; return its path.

    It includes the system's alsa.conf, so everything else stays defined, in particular the
    `pulse` pcm from alsa.conf.d. The override cannot simply follow the include: Debian's
    pulse.conf hook, run after all files are parsed, makes "default" the pulse pcm whenever a
    PulseAudio server answers. So the override is loaded by a hook of our own, which runs
    after that one.
    """
    directory.mkdir(parents=True, exist_ok=True)
    override = directory / "null-default.conf"
    override.write_text("pcm.!default {\n    type null\n}\n")
    config = directory / "asound.conf"
    config.write_text(
        f"<{ALSA_CONF}>\n"
        "@hooks [\n"
        "    {\n"
        "        func load\n"
        f'        files [ "{override}" ]\n'
        "        errors false\n"
        "    }\n"
        "]\n"
    )
    return config


@dataclass
class PulseDaemon:
    """A private PulseAudio daemon; `client_env` reaches it, `stop` ends it.

    `mic_fifo`: the FIFO of its microphone (started with `microphone=True`), else None.
    """

    process: subprocess.Popen[bytes]
    socket_path: Path
    log_path: Path
    client_env: dict[str, str]
    mic_fifo: Path | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def feed_microphone(self, pcm16_16k: bytes, lead_s: float = 0.5) -> MicrophoneFeeder:
        """Speak `pcm16_16k` into the microphone in real time: `lead_s` of zeros, the samples,
        then zeros until the returned feeder is stopped (a running thread the caller owns;
        `feeder.say(pcm)` speaks again). `b""`: a microphone in a quiet room."""
        if self.mic_fifo is None:
            raise RuntimeError("this daemon has no microphone: start_pulse(..., microphone=True)")
        return MicrophoneFeeder(self.mic_fifo, pcm16_16k, lead_s=lead_s).start()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within the bound."""
        stop(self.process, timeout=START_TIMEOUT_S)


def _pulse_script(socket_path: Path, mic_fifo: Path | None = None) -> str:
    """The daemon's only start-up script (`-n` skips the system's default.pa).

    A null sink idles with a 2 s block and a new stream then waits up to 2 s before the first
    frame is consumed. A loopback from its monitor into a second null sink keeps a low-latency
    reader attached at all times, and suspending/resuming the sinks restarts their clocks at
    that low latency. With `mic_fifo`, a pipe source reading that FIFO (the module creates it)
    is the default source instead of the sink's monitor. The socket comes last: once it
    answers, the script has run.
    """
    microphone = (
        [
            f"load-module module-pipe-source source_name={MIC_SOURCE} file={mic_fifo}"
            f" format=s16le rate={MIC_RATE} channels=1"
            f" source_properties=device.description={MIC_SOURCE}",
            f"set-default-source {MIC_SOURCE}",
        ]
        if mic_fifo is not None
        else [f"set-default-source {PULSE_MONITOR}"]
    )
    return "\n".join(
        [
            f"load-module module-null-sink sink_name={PULSE_SINK} rate={SINK_RATE}"
            f" sink_properties=device.description={PULSE_SINK}",
            f"load-module module-null-sink sink_name={PULSE_SINK}_drain rate={SINK_RATE}"
            f" sink_properties=device.description={PULSE_SINK}_drain",
            f"load-module module-loopback source={PULSE_MONITOR} sink={PULSE_SINK}_drain"
            " latency_msec=20 source_dont_move=true sink_dont_move=true",
            f"suspend-sink {PULSE_SINK} 1",
            f"suspend-sink {PULSE_SINK} 0",
            f"suspend-sink {PULSE_SINK}_drain 1",
            f"suspend-sink {PULSE_SINK}_drain 0",
            f"set-default-sink {PULSE_SINK}",
            *microphone,
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={socket_path}",
            "",
        ]
    )


def start_pulse(directory: Path, *, microphone: bool = False) -> PulseDaemon:
    """Start PulseAudio with a null sink, all state under `directory`; return once it answers.

    `microphone`: also a pipe source as the default source, fed with `feed_microphone`.

    Works as root and as a normal user: as root, pulseaudio only warns when not in --system
    mode. D-Bus and X11 are hidden from it so it cannot meet a desktop session's daemon. It runs
    with --daemonize=no, so it stays our child and dies with this process (process_guard).
    Call it from the main thread (process_guard.spawn says why).
    """
    home, runtime = directory / "home", directory / "runtime"
    home.mkdir(parents=True, exist_ok=True)
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)  # pulseaudio wants it private
    socket_path = runtime / "native"
    if len(os.fsencode(socket_path)) >= 100:  # sockaddr_un holds 108 bytes
        raise RuntimeError(f"socket path too long for AF_UNIX: {socket_path}")
    mic_fifo = directory / "mic.fifo" if microphone else None  # created by the module
    script = directory / "test.pa"
    script.write_text(_pulse_script(socket_path, mic_fifo))
    log_path = directory / "pulseaudio.log"

    hidden = ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "WAYLAND_DISPLAY")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_") and k not in hidden}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_RUNTIME_DIR=str(runtime),
        PULSE_RUNTIME_PATH=str(runtime / "pulse"),
        PULSE_STATE_PATH=str(directory / "state"),
    )
    command = [
        "pulseaudio", "-n", "-F", str(script),
        "--daemonize=no", "--system=no", "--exit-idle-time=-1", "--disallow-exit",
        "--use-pid-file=no", "--realtime=no", "--high-priority=no", "--log-target=stderr",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = spawn(command, env=env, stdin=subprocess.DEVNULL, stdout=log,
                        stderr=subprocess.STDOUT, cwd=directory)  # fmt: skip
    client_conf = directory / "client.conf"
    client_conf.write_text("autospawn = no\n")  # a client never starts a daemon of its own
    daemon = PulseDaemon(
        process=process,
        socket_path=socket_path,
        log_path=log_path,
        client_env={
            "PULSE_SERVER": f"unix:{socket_path}",
            "PULSE_COOKIE": str(directory / "client-cookie"),  # else libpulse writes in ~
            "PULSE_CLIENTCONFIG": str(client_conf),
        },
        mic_fifo=mic_fifo,
    )
    try:
        _wait_until_listening(daemon)
    except BaseException:
        daemon.stop()
        raise
    return daemon


def _wait_until_listening(daemon: PulseDaemon) -> None:
    """Poll the socket until it accepts a connection, the daemon dies, or the bound passes."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if daemon.process.poll() is not None:
            raise RuntimeError(f"pulseaudio exited ({daemon.process.returncode}):\n{daemon.log()}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(daemon.socket_path))
                return
            except (FileNotFoundError, ConnectionRefusedError):
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"pulseaudio not listening after {START_TIMEOUT_S} s:\n{daemon.log()}"
            )
        time.sleep(0.02)  # poll interval, not a synchronisation


def reinitialize_portaudio() -> None:
    """Re-run Pa_Initialize so PortAudio re-reads ALSA's configuration and lists its devices.

    PortAudio enumerates devices once, at `import sounddevice`, with the environment of that
    moment, and lists "pulse" only if a server answered then. Pa_Terminate closes every open
    stream, so call this only while no stream is open. Initialisation is reference-counted:
    release all references, then take as many again.
    """
    import sounddevice as sd

    count = sd._initialized
    for _ in range(count):
        sd._terminate()
    for _ in range(max(count, 1)):
        sd._initialize()


def alsa_pcm_type(name: str) -> str:
    """ALSA's type name of pcm `name` ("NULL"; "IOPLUG" for pulse), as this process sees it.

    Opens the pcm with the same libasound PortAudio uses, to prove which plugin a device name
    really reaches.
    """
    lib = ctypes.CDLL("libasound.so.2")
    lib.snd_pcm_type_name.restype = ctypes.c_char_p
    lib.snd_strerror.restype = ctypes.c_char_p
    pcm = ctypes.c_void_p()
    playback, nonblock = 0, 1
    error = lib.snd_pcm_open(ctypes.byref(pcm), name.encode(), playback, nonblock)
    if error < 0:
        raise OSError(f"snd_pcm_open({name!r}): {lib.snd_strerror(error).decode()}")
    try:
        return lib.snd_pcm_type_name(lib.snd_pcm_type(pcm)).decode()
    finally:
        lib.snd_pcm_close(pcm)


class MonitorRecording:
    """Records what the paced device plays, from the null sink's monitor, while in its `with`.

    The daemon's default source is that monitor, so a capture stream on the ALSA "pulse" pcm
    records it; `samples()` afterwards returns a (frames, channels) float32 array. Proves that
    sound really went out, not only that PortAudio asked for it.
    """

    def __init__(self, samplerate: int = SINK_RATE, channels: int = 1) -> None:
        import sounddevice as sd

        self._blocks: list[np.ndarray] = []
        self._channels = channels
        self._stream = sd.InputStream(
            device=PACED_DEVICE,
            samplerate=samplerate,
            channels=channels,
            dtype="float32",
            callback=self._callback,
        )

    def _callback(self, indata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        self._blocks.append(indata.copy())

    def __enter__(self) -> MonitorRecording:
        self._stream.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self._stream.stop()
        self._stream.close()

    def samples(self) -> np.ndarray:
        if not self._blocks:
            return np.zeros((0, self._channels), dtype=np.float32)
        return np.concatenate(self._blocks)


class MicrophoneFeeder:
    """Writes into a pipe source's FIFO in real time, from a thread the caller owns.

    The pipe source delivers nothing while nobody writes and passes data on as fast as it is
    written, so a recording only sounds like a microphone when the writer keeps the pace: 20 ms
    blocks on a real-time schedule, zeros for `lead_s`, then the speech, then zeros until
    `stop()`; `say()` speaks more in between. `speech_written` is set once the last block of
    the speech asked for went into the FIFO. Keep a feeder running for as long as a stream
    records the pipe source: PortAudio's ALSA capture thread spins on a CPU core while the
    source is silent for lack of a writer, which a real microphone never is.
    """

    def __init__(self, fifo: Path, pcm16_16k: bytes, *, lead_s: float = 0.5) -> None:
        self.fifo = fifo
        self.block_bytes = int(MIC_RATE * MIC_BLOCK_S) * 2
        self.speech_written = threading.Event()
        self.blocks_written = 0
        self.stalls = 0  # blocks the FIFO had no room for (the daemon stopped reading)
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._speech: deque[bytes] = deque()  # blocks of speech not written yet
        self._lead_blocks = round(lead_s / MIC_BLOCK_S)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mic-feeder", daemon=True)
        self.say(pcm16_16k)

    def say(self, pcm16_16k: bytes) -> None:
        """Speak `pcm16_16k` (PCM16, 16 kHz) after what is already queued."""
        if len(pcm16_16k) % 2:
            raise ValueError("PCM16 needs an even number of bytes")
        size = self.block_bytes
        starts = range(0, len(pcm16_16k), size)
        blocks = [pcm16_16k[i : i + size].ljust(size, b"\0") for i in starts]
        with self._lock:
            self._speech.extend(blocks)
            if self._speech:
                self.speech_written.clear()
            else:
                self.speech_written.set()

    def start(self) -> MicrophoneFeeder:
        self._thread.start()
        return self

    def _next_block(self) -> tuple[bytes, bool]:
        """The next block to write, and whether it ends the speech asked for."""
        if self._lead_blocks:
            self._lead_blocks -= 1
            return bytes(self.block_bytes), False
        with self._lock:
            if not self._speech:
                return bytes(self.block_bytes), False
            return self._speech.popleft(), not self._speech

    def _run(self) -> None:
        try:
            # O_NONBLOCK: the module holds the FIFO open for reading, so this open never waits,
            # and a daemon that stops reading cannot hang this thread in write().
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            self.error = error
            return
        try:
            due = time.monotonic()
            while True:
                block, last = self._next_block()
                try:
                    os.write(fd, block)
                    self.blocks_written += 1
                except BlockingIOError:
                    self.stalls += 1
                if last:
                    self.speech_written.set()
                due += MIC_BLOCK_S
                if self._stop.wait(max(0.0, due - time.monotonic())):  # pacing, not a sync
                    return
        except OSError as error:
            self.error = error
        finally:
            os.close(fd)

    def stop(self) -> None:
        """Stop writing and wait for the thread; raise what it failed with, if anything."""
        self._stop.set()
        self._thread.join(START_TIMEOUT_S)
        if self._thread.is_alive():
            raise RuntimeError("the microphone feeder did not stop")
        if self.error is not None:
            raise RuntimeError(f"the microphone feeder failed: {self.error}")

    def __enter__(self) -> MicrophoneFeeder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
