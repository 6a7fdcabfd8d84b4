"""Annotation platforms: each sink turns Instances into its platform's shape and nothing else."""
