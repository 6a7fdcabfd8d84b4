"""The Label Studio ML backend: the HTTP protocol (app), the model side (predictor), images."""
