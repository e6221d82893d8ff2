"""Data sets read from local files: MovieLens-100k (recbole wheel), Open Bandit Dataset."""
