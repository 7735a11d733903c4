"""Planning a run before it starts (jobs.plan): memory per rank (memory.py) and the hardware profiles, stages
and roles of a recipe (profiles.py)."""
