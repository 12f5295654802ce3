"""Figures that compare several runs (the comparison notebook)."""

from __future__ import annotations
