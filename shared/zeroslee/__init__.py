"""Code every zeroslee service shares: bus vocabulary, configuration, logging, runtime."""
