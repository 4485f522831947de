"""Architectures with per-stage features, the multi-exit (skeptical) wrapper, checkpoint loading."""

from kdaudit.models.registry import ARCHITECTURES, build_model, parse_arch

__all__ = ["ARCHITECTURES", "build_model", "parse_arch"]
