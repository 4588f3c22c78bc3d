"""The Gerber–Green–Larimer social-pressure RCT: HUM against baselines and established peers."""
