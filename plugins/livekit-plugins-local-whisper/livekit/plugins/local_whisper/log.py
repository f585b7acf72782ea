import logging

logger = logging.getLogger("livekit.plugins.local_whisper")
