"""What every layer shares and that imports nothing else of recon_pipeline: the mapping
and its settings, value normalisation and key order, secret masking."""
