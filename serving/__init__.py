"""The online decision service (spec §2): DDM value weights × published δ -> decisions, over BentoML."""
