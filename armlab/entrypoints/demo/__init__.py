"""End-to-end demos: the MovieLens adaptive experiment and the Open Bandit Dataset replay."""
