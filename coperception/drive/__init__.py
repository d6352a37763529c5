"""Closed-loop driving evaluation: backends (embedded simulator, CARLA), a driving agent that acts
on collaborative perception, scenario families and leaderboard metrics."""
