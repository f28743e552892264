"""The trained models shipped with pytest-llmperf (GGUF files; see tools/train_addition_model.py)."""
