"""talkingface: one photo + one speech clip -> a lip-synced talking-face video."""

__version__ = "0.1.0"
