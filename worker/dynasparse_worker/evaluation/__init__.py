"""Quality evaluation of the gated model against dense and a uniform baseline (`dynasparse eval`)."""
