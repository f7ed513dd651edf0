"""gradsweep's Hydra launcher plugin: Slurm arrays that never hang a sweep (slurm_launcher.py)."""
