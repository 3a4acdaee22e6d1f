"""Publishing to the Hugging Face Hub: the folder checks and the one-commit upload (`push`) and the model cards
(`model_card`).

May import `training.core` and `training.engine.config` (a card describes the training settings).
"""
