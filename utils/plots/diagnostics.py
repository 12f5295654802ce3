"""Figures of the random-matrix diagnostics, null models, model-vs-model diffs and head circuits."""

from __future__ import annotations
