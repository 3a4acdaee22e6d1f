"""Models and processors by name: the official processor presets, the bundled CLIP tokenizer, a Gemma tokenizer learned
on the spot for SigLIP 2-style models built offline (`gemma_tokenizer`), the remote-code copy that makes a folder
Hub-ready (`remote_code`) and the loading of whatever a user passes as ``--model`` (`loading`).

May import `training.core` and `training.conversion` (an official checkpoint is converted on first use).
"""
