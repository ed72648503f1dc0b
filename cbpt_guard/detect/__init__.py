"""Zero-shot backdoor detection: contrastive trigger inversion with calibrated evidence."""
