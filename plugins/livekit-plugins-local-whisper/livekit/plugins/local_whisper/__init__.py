"""Local Whisper plugin for LiveKit Agents

Streaming speech-to-text with a Whisper model on the CPU or GPU (faster-whisper), segmented
by Silero VAD: interim transcripts while someone speaks, a final one when they pause. The
decodes of concurrent streams are batched onto one model, whatever their language.
"""

from .backend import (
    DEFAULT_MODEL,
    MODEL_ENV,
    Job,
    Lead,
    ModelLoadError,
    Transcript,
    WhisperBackend,
    Word,
)
from .policy import LocalAgreement
from .processor import StreamProcessor
from .scheduler import Priority, Scheduler, SchedulerFull
from .stt import STT, SpeechStream, STTOptions
from .version import __version__

__all__ = [
    "STT",
    "SpeechStream",
    "STTOptions",
    "ModelLoadError",
    "WhisperBackend",
    "Word",
    "Lead",
    "Job",
    "Transcript",
    "StreamProcessor",
    "LocalAgreement",
    "Scheduler",
    "SchedulerFull",
    "Priority",
    "DEFAULT_MODEL",
    "MODEL_ENV",
    "__version__",
]

import os

from livekit.agents import Plugin

from .log import logger


class LocalWhisperPlugin(Plugin):
    def __init__(self) -> None:
        super().__init__(__name__, __version__, __package__, logger)

    def download_files(self) -> None:
        """Fetch the model named by $LOCAL_WHISPER_MODEL (default tiny.en) and the Silero VAD."""
        from livekit.plugins import silero

        from .backend import resolve_model

        model = os.environ.get(MODEL_ENV) or DEFAULT_MODEL
        logger.info("downloading whisper model %s", model)
        resolve_model(model, download=True)
        # silero ships its model inside the package; loading it proves it is usable
        silero.VAD.load()


Plugin.register_plugin(LocalWhisperPlugin())

# Cleanup docs of unexported modules
_module = dir()
NOT_IN_ALL = [m for m in _module if m not in __all__]

__pdoc__ = {}

for n in NOT_IN_ALL:
    __pdoc__[n] = False
