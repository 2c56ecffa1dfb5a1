"""The app boundary: the authenticated HTTP API the frontend calls (``chargectl app serve``)."""
