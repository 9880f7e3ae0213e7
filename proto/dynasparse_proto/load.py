"""The arrival-rate windows of a Report's LoadSignals: the worker measures over them and the
operator judges the noise of the counts by them, so both read them from here."""

SHORT_WINDOW_S = 2.0
"""Short enough that a step in the load shows within a second or two."""
LONG_WINDOW_S = 10.0
"""Long enough to average Poisson noise, short enough that a ramp shows within seconds."""
