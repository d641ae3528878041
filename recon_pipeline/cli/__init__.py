"""`recon-pipeline`: runs the same job as the UI, prints reports, sets up databases."""
