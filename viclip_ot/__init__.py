"""The library behind the scripts and the remote-code model: training (losses, gradient caching, the trainer, data
collation, options), evaluation (retrieval metrics, the encoders and baselines eval.py compares, bootstrap intervals,
mteb), the photo index and its search, model loading and conversion of the authors' weights, model cards, and the
small offline towers of the demo and the tests."""
