"""The adapter eval harness: metrics over a model's outputs and the gates an adapter must pass
before it may replace what is live. The metrics (training.eval.metrics) are pure functions over
texts, so they are tested without a model; a runner calls the model and feeds them its outputs.
"""
