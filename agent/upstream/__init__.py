"""Upstream escalation over BGP (see docs/upstream.md)."""
