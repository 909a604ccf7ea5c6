"""The whole training stage: fit (the stage body), the loop, Accelerate set-up, checkpoints,
the launcher and its worker, the one model builder, and the data-versus-step check.

`pipeline.stages.train` calls `fit.fit` (or `launch.run_launched` for several processes).
"""
