"""What the plugin ships: the embedded tiny model, the trained addition model and the offline lm-eval tasks."""
