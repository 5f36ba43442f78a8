"""Equal-budget, valid-only leaderboard (``python -m recgoat.leaderboard``): see ``__main__``."""
from recgoat.leaderboard.search import LeaderboardError, Plan, run_model
from recgoat.leaderboard.space import Space, SpaceError, load_space

__all__ = ["LeaderboardError", "Plan", "Space", "SpaceError", "load_space", "run_model"]
