"""Engines that run a job's batches somewhere other than the driver process (a Ray cluster).

The run loop (autolabel.runner) stays the one home of resume, records and the final outputs;
an engine only decides where `runner.label_batch` runs and hands the records back as they finish.
"""
