"""`spotctl demo`: the whole tool on the embedded local cloud, a simulated day in about a minute."""
