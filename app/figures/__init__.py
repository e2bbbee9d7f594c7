"""Plotly figures, one module per view: ``routing`` (one image's route), ``dataset`` (the test set),
``images`` (predictions and attributions of one image); ``common`` holds what they share."""
