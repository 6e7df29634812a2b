"""Experiments that reproduce a paper's measurement (not a trained row of a leaderboard)."""
