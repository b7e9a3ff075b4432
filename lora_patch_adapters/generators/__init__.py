"""Face-editing generators that patches attach to."""

from .stargan import StarGANGenerator

__all__ = ["StarGANGenerator"]
