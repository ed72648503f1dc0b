"""Stage 2: class-wise backdoor prompt tuning (CBPT, METHOD.md sections 5 and 6).

Only class-specific text prompts are learned; every weight of the checkpoint
stays frozen. ``text_encoder`` runs open_clip's text path on token embeddings,
``prompt_learner`` holds the learnable context, ``losses`` the three CBPT
terms, and ``trainer`` the tuning loop over precomputed image features.
"""
