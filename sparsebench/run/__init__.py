"""The run pipeline: a request becomes a plan (``plan``), the plan is trained by the loop on one screen
(``train``) that repeats THE training step (``loop``), and the trained model is finished: calibrated,
exported, counted and logged (``finish``; ``refinish`` repeats only that end)."""
