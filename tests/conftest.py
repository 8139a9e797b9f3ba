"""Settings for the whole suite."""

from hypothesis import settings

# The suite runs on every core at once (pytest-xdist): a wall-clock deadline per
# example would measure the neighbouring worker, not the code. Speed is the
# benchmark's business (`nox -s bench`), never a test's.
settings.register_profile("sansproxy", deadline=None)
settings.load_profile("sansproxy")
