"""Shared pieces of the yes/no question games (TelepathyGym, TurtleGym)."""
