"""Live captions for LiveKit meetings: a LiveKit Agents worker that joins a room once,
transcribes every participant's audio track and publishes captions back into the room."""

from .settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError"]
