"""The pieces of the training stage: Accelerate set-up, the loop, checkpoints and the launcher.

`pipeline.train.run` ties them together; each module here stays free of stage bookkeeping.
"""
