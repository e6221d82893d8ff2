"""armlab: bandit-based continuous experimentation for language-model recommenders."""

__version__ = "0.1.0"
