"""Text generation: the continuously batched, KV-cached token loop, stop strings, printable
streaming, the book's responses format, and the set-up of a loaded model's generation settings.

Example:
    >>> from sftkit.generation import GenerationConfig
    >>> GenerationConfig(max_new_tokens=8).temperature  # greedy unless told otherwise
    0.0
"""

from sftkit.generation.batcher import ContinuousBatcher, Event
from sftkit.generation.config import GenerationConfig
from sftkit.generation.constraints import Constraint
from sftkit.generation.engine import generate, stream, stream_batch
from sftkit.generation.responses import generate_responses
from sftkit.generation.sampling import sample_next
from sftkit.generation.settings import for_decoding, generation_settings
from sftkit.generation.stops import StopStrings
from sftkit.generation.streamer import TextStreamer

__all__ = ["Constraint", "ContinuousBatcher", "Event", "GenerationConfig", "StopStrings",
           "TextStreamer", "for_decoding", "generate", "generate_responses", "generation_settings",
           "sample_next", "stream", "stream_batch"]
