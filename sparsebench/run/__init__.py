"""The run pipeline: a request becomes a plan, the plan is trained, the trained model is finished."""
